"""KeyPair and the key directory (~/.messidge), in the C tools' layout.

    PREFIX/NAME        secret key, base64 (mode 0600)
    PREFIX/NAME.pub    public key, base64
    PREFIX/NAME.spub   the broker's public key for location NAME
    PREFIX/default_location

PREFIX is $MESSIDGE_PREFIX when set, else ~/.messidge.
"""
import base64

from . import _core


class KeyPair:
    """A Curve25519 key pair: .public and .secret (32 bytes each),
    .public_b64 and .secret_b64 (the key files' text).

        KeyPair('localhost_broker')          # load PREFIX/localhost_broker(.pub)
        KeyPair.new('localhost_broker')      # make one and save it
        KeyPair(public=pk, secret=sk)        # bytes or base64 text

    Loading keys that are not there raises messidge.NotFoundError, which is
    a RuntimeError as the guide expects (and a FileNotFoundError).
    """

    def __init__(self, name=None, prefix=None, public=None, secret=None):
        if name is not None:
            if public is not None or secret is not None:
                raise TypeError("KeyPair: give a name to load, or public= and secret=, not both")
            self.public, self.secret = _core.keys_load(name, prefix)
        elif public is not None and secret is not None:
            self.public, self.secret = _core.keys_check(public, secret)
        else:
            raise TypeError("KeyPair needs a name to load, or both public= and secret=")

    @classmethod
    def new(cls, name=None, prefix=None):
        """A new random key pair, saved as NAME in the key directory when named."""
        public, secret = _core.keys_new()
        keys = cls(public=public, secret=secret)
        if name is not None:
            keys.save(name, prefix)
        return keys

    def save(self, name, prefix=None):
        """Write PREFIX/NAME (0600) and PREFIX/NAME.pub; PREFIX made 0700."""
        _core.keys_save(self.public, self.secret, name, prefix)

    @property
    def public_b64(self):
        return base64.b64encode(self.public).decode()

    @property
    def secret_b64(self):
        return base64.b64encode(self.secret).decode()

    def __repr__(self):
        return "KeyPair(public=%r)" % self.public_b64  # never the secret

    def __eq__(self, other):
        return isinstance(other, KeyPair) and (self.public, self.secret) == (other.public, other.secret)

    __hash__ = None


def default_location(prefix=None):
    """The contents of PREFIX/default_location (written by create_account)."""
    return _core.default_location(prefix)


def prefix_path(prefix=None):
    """The key directory actually used."""
    return _core.prefix_path(prefix)


def server_pk(location, prefix=None):
    """The broker's public key pinned for location (PREFIX/LOCATION.spub)."""
    return _core.server_pk_load(location, prefix)
