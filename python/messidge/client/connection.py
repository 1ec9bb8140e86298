"""Connection: what users and nodes use to talk to the broker.

    conn = Connection(default_location())          # keys from ~/.messidge
    conn.start().wait_until_ready()
    conn.send_cmd(b'write_note', {'note': 'hello'})
    reply = conn.send_blocking_cmd(b'fetch_notes')

A node: Connection(location, server_pk=..., keys=KeyPair(...),
reflect_value_errors=True), register_commands(controller, commands), start().

Handlers and reply callbacks run on the connection's loop thread, holding
the GIL. Blocking calls release the GIL while they wait; one may be made
from a handler or a callback; Ctrl-C ends one in the main thread
(KeyboardInterrupt).
"""
from .. import _core, _lifetime
from .._commands import make_cmd, table_rows

EVENTS = {_core.EV_CONNECTED: 'connected', _core.EV_DISCONNECTED: 'disconnected',
          _core.EV_RECOVERED: 'recovered', _core.EV_LOST: 'lost'}


def cmd(required, needs_reply=False):
    """A command the broker may send us: the params that must be present,
    and whether it needs a replyable message."""
    return make_cmd(required, needs_reply)


class Connection(_core.Connection):
    """Connection(location=None, server_pk=None, keys=None, reflect_value_errors=False)

    location: the broker's host; None reads PREFIX/default_location. With
    just a location the keys are PREFIX/LOCATION, .pub and .spub (the
    broker's key); a node gives server_pk (bytes or base64) and keys (a
    KeyPair). reflect_value_errors: a ValueError raised by one of our
    handlers goes back to the caller with its text (else only "the handler
    failed"). Keyword options: port (2020), prefix (the key directory),
    queue_limit, nonblocking, heartbeat_ms, reconnect_min_ms,
    reconnect_max_ms, failover_ms; on_event=f(event, detail) with event one
    of 'connected', 'disconnected', 'recovered', 'lost'.

    add_broker(location, server_pk, port=0), before start(): another broker
    of the fleet to move to when this one stays unreachable for failover_ms
    (3000 by default) or refuses us: a new session there ('lost', pending
    calls failed, then 'connected').
    """

    def __init__(self, location=None, server_pk=None, keys=None, reflect_value_errors=False, *,
                 on_event=None, on_error=None, **options):
        if keys is not None:
            super().__init__(location, server_pk=server_pk, public=keys.public, secret=keys.secret,
                             reflect_errors=reflect_value_errors, **options)
        elif server_pk is not None:
            raise TypeError("Connection: server_pk is given with keys (a node); "
                            "a user's come from the key directory")
        else:
            super().__init__(location, reflect_errors=reflect_value_errors, **options)
        if on_event is not None:
            self.on_event(on_event)
        if on_error is not None:
            self.set_error_handler(on_error)
        _lifetime.track(self)

    def register_commands(self, controller, commands):
        """Commands the broker may push (resource_offer) or, for a node,
        the calls it serves. Before start()."""
        super().register_commands(table_rows(controller, commands))

    def on_event(self, fn):
        """fn(event, detail) on the loop thread for link and session events."""
        super().set_event_handler(lambda ev, detail: fn(EVENTS.get(ev, ev), detail))

    def start(self):
        """Start the loop thread and connect; returns self."""
        super().start()
        return self

    def wait_until_ready(self, timeout=None):
        """Wait until the session is established; returns self."""
        super().wait_until_ready(timeout)
        return self

    # send_cmd(command, params=None, bulk=None, reply_callback=None) and
    # send_blocking_cmd(command, params=None, bulk=None, timeout=None) are
    # _core.Connection's own: called once per message, they take no Python
    # frame of their own here.

    def send_skt(self):
        """The original's socket factory: here the connection itself, which
        msg.reply(socket, results=...) accepts and ignores."""
        return self

    def wait_until_complete(self, timeout=None):
        """Wait until the connection's loop ends (disconnect, or the broker
        closed the session)."""
        return super().wait_until_complete(timeout)

    def _close_at_exit(self):
        self.disconnect()
