"""messidge: the Messidge API of the "Using Messidge" guide, on libmessidge (C).

    from messidge import KeyPair, default_location
    from messidge.broker.broker import Broker, cmd
    from messidge.broker.bases import ModelMinimal, SessionMinimal, NodeMinimal
    from messidge.client.connection import Connection, cmd

Handlers, hooks and reply callbacks run on the library's loop threads,
holding the GIL; blocking calls release it while they wait. See
python/README.md for what differs from the original Python Messidge.
"""
from . import _core
from ._core import (Error, TimeoutError, ClosedError, NotFoundError, AuthError,  # noqa: F401
                    Message)
from .keys import KeyPair, default_location, prefix_path  # noqa: F401
from .identity import Identity, AccountServer, create_account  # noqa: F401

__version__ = _core.version()


def version():
    """The version of libmessidge this package runs on."""
    return _core.version()


def set_log_level(level):
    """How much the library logs on stderr: 0 errors .. 3 debug."""
    _core.set_log_level(int(level))


__all__ = ['KeyPair', 'default_location', 'prefix_path', 'Identity', 'AccountServer',
           'create_account', 'Error', 'TimeoutError', 'ClosedError', 'NotFoundError',
           'AuthError', 'Message', 'version', 'set_log_level']
