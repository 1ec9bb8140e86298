"""Who may connect: the identity store, the account server, create_account.

The original Python Messidge's Identity, Authenticate and
AccountConfirmationServer, on libmessidge's identity store (an SQLite
database, STATE_DIR/identity.sqlite3, or a PostgreSQL one that several
brokers share, given as a postgresql:// URI: the one `messidge-admin`
edits):

    identity = Identity('./messidge-state')
    token = identity.invite('someone@example.com')   # single use, expires
    identity.add_node('divide', node_keys.public)
    identity.list()          # users, nodes, pending invitations (dicts)

and on the user's side

    create_account('localhost', token)   # make keys, confirm, pin the broker

which writes ~/.messidge/localhost(.pub, .spub) and default_location.
"""
from . import _core

ROLE_NONE, ROLE_USER, ROLE_NODE = _core.ROLE_NONE, _core.ROLE_USER, _core.ROLE_NODE
AccountServer = _core.AccountServer


class Identity(_core.Identity):
    """Identity(state_dir=None): open (creating) the store in a state directory
    or a postgresql:// URI; None means ./messidge-state."""

    def role(self, pk):
        """(ROLE_USER / ROLE_NODE / ROLE_NONE, config JSON text or None) of a key."""
        return super().role(pk)

    def users(self):
        return [e for e in self.list() if e['kind'] == 'user']

    def nodes(self):
        return [e for e in self.list() if e['kind'] == 'node']

    def pending(self):
        return [e for e in self.list() if e['kind'] == 'pending']

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create_account(location, token, port=0, prefix=None, overwrite=False):
    """Confirm an invitation: make a key pair, post it with the token to the
    account server (http://LOCATION:PORT/, port 0: 2021), and on success
    write the keys, the broker's key and default_location under the prefix.
    An existing account for location is refused unless overwrite=True."""
    _core.create_account(location, token, port=port, prefix=prefix, overwrite=overwrite)
