"""Links that drop: the session recovered with nothing lost, a session
the broker no longer has (lost), and calls pending when it closes."""
import threading

import pytest

import messidge
from conftest import TIMEOUT, make_broker, make_conn, wait_for
from messidge import KeyPair
from messidge.broker.bases import ModelMinimal
from messidge.broker.broker import Broker, cmd
from messidge.client.connection import Connection
from relay import Relay


class Notes:
    def __init__(self):
        self.notes = []
        self.held = threading.Event()

    def _write_note(self, msg):
        self.notes.append(msg.params['note'])

    def _fetch_notes(self, msg):
        msg.reply({'notes': list(self.notes)})

    def _hold(self, msg):
        self.kept = msg.keep()  # never answered
        self.held.set()

    commands = {b'write_note': cmd(['note']), b'fetch_notes': cmd([], needs_reply=True),
                b'hold': cmd([], needs_reply=True)}


def connect(broker, port, events):
    c = Connection('127.0.0.1', server_pk=broker.keys.public, keys=KeyPair.new(), port=port,
                   reconnect_min_ms=20, reconnect_max_ms=200,
                   on_event=lambda ev, detail: events.append(ev))
    return c.start().wait_until_ready(TIMEOUT)


def test_session_recovered(broker_keys, closing):
    ctl = Notes()
    b = make_broker(broker_keys, ctl)
    closing.append(b)
    relay = Relay(b.port)
    events = []
    c = connect(b, relay.port, events)
    closing.append(c)
    sid = c.session_id
    c.send_cmd(b'write_note', {'note': 'before'})
    assert c.send_blocking_cmd(b'fetch_notes', timeout=TIMEOUT).params['notes'] == ['before']

    relay.hold = True
    relay.cut()
    wait_for(lambda: 'disconnected' in events, what="the drop")
    c.send_cmd(b'write_note', {'note': 'during'})  # queued until the link is back
    relay.hold = False
    wait_for(lambda: 'recovered' in events, what="the resume")
    assert c.session_id == sid
    assert c.send_blocking_cmd(b'fetch_notes', timeout=TIMEOUT).params['notes'] == ['before', 'during']
    assert list(b.model.sessions) == [sid]
    relay.close()


def test_session_lost(broker_keys, closing):
    b1 = make_broker(broker_keys, Notes())
    port = b1.port
    events = []
    c = connect(b1, port, events)
    closing.append(c)
    sid = c.session_id
    b1.stop()
    wait_for(lambda: 'disconnected' in events, what="the drop")
    b2 = Broker(broker_keys, ModelMinimal(), controller=Notes(), port=port, bind_address='127.0.0.1',
                allow_any=True)
    closing.append(b2)
    b2.start()
    wait_for(lambda: 'lost' in events, what="the lost session")
    assert c.session_id != sid
    assert c.send_blocking_cmd(b'fetch_notes', timeout=TIMEOUT).params['notes'] == []


def test_pending_call_when_closed(broker_keys, closing):
    ctl = Notes()
    b = make_broker(broker_keys, ctl)
    closing.append(b)
    c = make_conn(b)
    threading.Thread(target=lambda: (ctl.held.wait(TIMEOUT), c.disconnect())).start()
    with pytest.raises(messidge.ClosedError):
        c.send_blocking_cmd(b'hold')
    with pytest.raises(messidge.Error, match="closed"):
        c.send_cmd(b'write_note', {'note': 'x'})


def test_failover_to_another_broker(closing):
    """A connection given a second broker moves to it when its broker goes:
    a new session there ('lost', then 'connected'), its pending call failed
    with the reason, and calls work again at once."""
    at_a = Notes()
    a, b = make_broker(KeyPair.new(), at_a), make_broker(KeyPair.new(), Notes())
    closing.extend([b, a])
    events = []
    c = Connection('127.0.0.1', server_pk=a.keys.public, keys=KeyPair.new(), port=a.port,
                   reconnect_min_ms=20, reconnect_max_ms=200, failover_ms=500,
                   on_event=lambda ev, detail: events.append((ev, detail)))
    c.add_broker('127.0.0.1', b.keys.public, port=b.port)
    closing.append(c)
    c.start().wait_until_ready(TIMEOUT)
    c.send_cmd(b'write_note', {'note': 'at A'})
    assert c.send_blocking_cmd(b'fetch_notes', timeout=TIMEOUT).params['notes'] == ['at A']

    failed = []

    def pending():
        try:
            c.send_blocking_cmd(b'hold', timeout=TIMEOUT)
        except messidge.ClosedError as e:
            failed.append(str(e))
    t = threading.Thread(target=pending)
    t.start()
    wait_for(at_a.held.is_set, what="the call at A")
    a.stop()
    closing.remove(a)
    t.join(TIMEOUT)
    assert failed and 'went away' in failed[0] and 'session lost' in failed[0], failed
    wait_for(lambda: [ev for ev, _ in events][-2:] == ['lost', 'connected'], what="the move to B")
    lost = [detail for ev, detail in events if ev == 'lost'][0]
    assert 'now connected to' in lost
    c.send_cmd(b'write_note', {'note': 'at B'})
    assert c.send_blocking_cmd(b'fetch_notes', timeout=TIMEOUT).params['notes'] == ['at B']
