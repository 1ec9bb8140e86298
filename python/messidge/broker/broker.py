"""The broker: Broker(keys, model, NodeType, SessionType, controller).

    broker = Broker(keys, model, MyNode, MySession, controller)
    try:
        broker.run()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()

Handlers, hooks and the model's resources() run on the broker's loop
thread (one thread: no locks needed between them), holding the GIL.
"""
import json

from .. import _core, _lifetime
from .._commands import make_cmd, table_rows
from ..identity import Identity
from .bases import NodeMinimal, SessionMinimal


def cmd(required, needs_reply=False, node_only=False):
    """A command's validation: the params that must be present (their types
    are the handler's business), whether it needs a replyable message, and
    whether only nodes may send it."""
    return make_cmd(required, needs_reply, node_only)


class Broker(_core.Broker):
    """A broker serving controller.commands to users and nodes.

    keys: the broker's KeyPair. Keyword options: port (2020; 0 = a free
    one, see .port), bind_address ('*'), and who may connect:
      - state_dir / identity: the identity store (default ./messidge-state),
        with an account server on port + 1 (account_port; None: port + 1,
        or a free port when port is 0; accounts=False: none);
      - allow_any=True: every key is admitted as a user (tests, demos);
    and libmessidge's broker options (session_grace_ms, node_grace_ms,
    queue_limit, node_window, legacy, legacy_port, max_message).
    """

    def __init__(self, keys, model, node_type=NodeMinimal, session_type=SessionMinimal,
                 controller=None, *, port=_core.DEFAULT_PORT, bind_address=None, state_dir=None,
                 identity=None, accounts=True, account_port=None, allow_any=False, **options):
        super().__init__(keys.public, keys.secret, bind_address=bind_address, port=port, **options)
        self.keys = keys
        self.model = model
        self.node_type = node_type
        self.session_type = session_type
        self.controller = controller
        self.identity = None
        self.account_server = None
        self._accounts = accounts and not allow_any
        self._account_port = account_port
        self._asked_port = port
        self._bind = bind_address
        if controller is not None:
            self.set_commands(table_rows(controller, type(controller).commands
                                         if hasattr(type(controller), 'commands') else controller.commands))
        self.set_hooks(self)
        if allow_any:
            self.allow_any()
        else:
            self.identity = identity if identity is not None else Identity(state_dir)
            self.identity.attach(self)
        _lifetime.track(self)

    # -- running

    def start(self):
        """Bind and serve on a background thread (and the account server)."""
        super().start()
        if self._accounts and self.account_server is None and self.identity is not None:
            port = self._account_port
            if port is None:
                port = 0 if self._asked_port == 0 else self.port + 1
            bind = None if self._bind in (None, '*') else self._bind
            self.account_server = _core.AccountServer(self.identity, self.keys.public, bind, port)
        return self

    def run(self):
        """Serve until stop() (from another thread, or a handler); Ctrl-C
        raises KeyboardInterrupt here, the broker still running until stop()."""
        self.start()
        super().run()

    def stop(self):
        """Stop serving: the account server, the broker, the identity store.
        From a handler the broker closes on a thread of its own, still
        reading the store: the store is then left open (closed when freed)."""
        if self.account_server is not None:
            self.account_server.close()
            self.account_server = None
        from_handler = self.on_loop_thread
        super().stop()
        identity, self.identity = self.identity, None
        if from_handler:
            self._identity_still_read = identity  # kept open while the broker closes
        elif identity is not None:
            identity.close()
        self.model.sessions.clear()
        self.model.nodes.clear()

    def _close_at_exit(self):
        self.stop()

    # -- sending from the broker

    def send_cmd(self, rid, command, params=None, bulk=None):
        """Send a command (no reply) to a user session, by its rid (the
        'session' param of its messages), or to a node by its pk."""
        command = command.decode() if isinstance(command, bytes) else command
        if rid in self.model.nodes:
            self.send_node(rid, command, params, bulk)
        else:
            self.send_session(rid, command, params, bulk)

    # -- hooks (the library calls these on its loop thread)

    def session_new(self, pk, rid):
        session = self.session_type(rid, pk, None)
        self.model.sessions[rid] = session
        return session

    def session_closed(self, pk, session):
        if session is not None:
            self.model.sessions.pop(session.rid, None)

    def node_joined(self, pk):
        config = {}
        if self.identity is not None:
            role, text = self.identity.role(pk)
            if text:
                try:
                    config = json.loads(text)
                except ValueError:
                    config = {}
        node = self.node_type(pk, None, config)
        self.model.nodes[pk] = node
        return node

    def node_left(self, pk, node):
        self.model.nodes.pop(pk, None)

    def resources(self, pk):
        return self.model.resources(pk) if hasattr(self.model, 'resources') else None
