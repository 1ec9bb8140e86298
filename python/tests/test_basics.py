"""A broker and connections in one process: commands declared the guide's
way, fire and forget, blocking calls, reply callbacks, the ValueError round
trip, the checks a command table makes, the resource offer, and commands
the broker sends to a session or a node."""
import threading

import pytest

import messidge
from conftest import TIMEOUT, make_broker, make_conn, wait_for
from messidge.broker.broker import cmd
from messidge.client.connection import cmd as client_cmd
from messidge.identity import ROLE_NODE


class Notes:
    def __init__(self):
        self.notes = {}
        self.lock = threading.Lock()

    def _write_note(self, msg):
        self.notes.setdefault(msg.params['user'], []).append(msg.params['note'])

    def _fetch_notes(self, msg):
        msg.reply({'notes': self.notes.get(msg.params['user'], [])})

    def _echo(self, msg):
        msg.reply(results=dict(msg.params), bulk=msg.bulk)

    def _raise_exception(self, msg):
        raise ValueError("raise_exception was called")

    def _type_error(self, msg):
        raise TypeError("not a ValueError")

    def _node_thing(self, msg):
        msg.reply({})

    commands = {
        b'write_note': cmd(['note']),
        b'fetch_notes': cmd([], needs_reply=True),
        b'echo': cmd([], needs_reply=True),
        b'raise_exception': cmd([], needs_reply=True),
        'type_error': cmd([], needs_reply=True),
        b'node_thing': cmd([], needs_reply=True, node_only=True),
    }


@pytest.fixture
def broker(broker_keys, closing):
    b = make_broker(broker_keys, Notes())
    closing.append(b)
    return b


@pytest.fixture
def conn(broker, closing):
    c = make_conn(broker)
    closing.append(c)
    return c


def test_notes(conn):
    conn.send_cmd(b'write_note', {'note': 'one'})
    conn.send_cmd('write_note', {'note': 'two'})
    # in order: the blocking call is not processed before the writes
    assert conn.send_blocking_cmd(b'fetch_notes').params['notes'] == ['one', 'two']


def test_stamped_identity(conn):
    r = conn.send_blocking_cmd(b'echo', {'user': b'x' * 32, 'session': b'forged'})
    # the broker's stamps win over what the sender put
    assert r.params['user'] != b'x' * 32 and len(r.params['user']) == 32
    assert r.params['session'] == conn.session_id


def test_values_round_trip(conn):
    values = {'none': None, 't': True, 'f': False, 'int': -5, 'big': 2 ** 64 - 1, 'neg': -2 ** 63,
              'float': 1.5, 'str': 'héllo', 'bytes': b'\x00\xff', 'list': [1, [2, 'x']],
              'map': {'a': {'b': 1}}, 'tuple': (1, 2), 'empty': {},
              'keys': {1: 'int', (1, (2, 'x')): 'a tuple key comes back a tuple'}}
    r = conn.send_blocking_cmd(b'echo', values, bulk=b'bulk data' * 1000)
    for k, v in values.items():
        assert r.params[k] == (list(v) if isinstance(v, tuple) else v), k
    assert r.bulk == b'bulk data' * 1000
    assert r.command == '' and r.error is None and not r.more


def test_reply_callback(conn):
    got = []
    done = threading.Event()
    thread = []

    def cb(msg):
        got.append(msg.params['notes'])
        thread.append(threading.get_ident())
        done.set()
    conn.send_cmd(b'write_note', {'note': 'n'})
    conn.send_cmd(b'fetch_notes', reply_callback=cb)
    assert done.wait(TIMEOUT)
    assert got == [['n']]
    assert thread[0] != threading.get_ident()  # the loop thread


def test_reply_kept_past_its_callback(conn):
    """A reply callback's Message makes its params, bulk and command when
    first read, or when the callback returns if it is kept: the same either
    way, read in the callback or after it."""
    kept, seen = [], []
    done = threading.Event()

    def keep(msg):
        kept.append(msg)
        done.set()

    def read(msg):
        seen.append((msg.command, msg.params, msg.bulk, repr(msg)))
    conn.send_cmd(b'echo', {'a': [1, 'two'], 'b': b'3'}, bulk=b'bulk', reply_callback=read)
    conn.send_cmd(b'echo', {'a': [1, 'two'], 'b': b'3'}, bulk=b'bulk', reply_callback=keep)
    assert done.wait(TIMEOUT)
    m = kept[0]
    assert seen == [(m.command, m.params, m.bulk, repr(m))]
    assert m.command == '' and m.params['a'] == [1, 'two'] and m.params['b'] == b'3'
    assert m.bulk == b'bulk'
    assert m.error is None and not m.more
    with pytest.raises(RuntimeError, match="cannot reply to ''"):
        m.reply({})


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the TypeError, reported
def test_value_error_round_trip(conn):
    with pytest.raises(ValueError, match="^raise_exception was called$"):
        conn.send_blocking_cmd(b'raise_exception')
    # another exception fails the call too, with its type (and is reported)
    with pytest.raises(ValueError, match="TypeError: not a ValueError"):
        conn.send_blocking_cmd(b'type_error')
    # an error reply to a callback
    got = []
    done = threading.Event()
    conn.send_cmd(b'raise_exception', reply_callback=lambda m: (got.append(m.error), done.set()))
    assert done.wait(TIMEOUT)
    assert got == ["raise_exception was called"]


def test_table_checks(conn):
    with pytest.raises(ValueError, match="note"):
        conn.send_blocking_cmd(b'write_note')  # a required param missing
    with pytest.raises(ValueError, match="no_such"):
        conn.send_blocking_cmd(b'no_such')
    with pytest.raises(ValueError, match="node"):
        conn.send_blocking_cmd(b'node_thing')  # node only


def test_resource_offer(broker, closing):
    class Client:
        def __init__(self):
            self.offers = []

        def _resource_offer(self, msg):
            self.offers.append(msg.params['nodes'])
        commands = {b'resource_offer': client_cmd(['nodes'])}
    ctl = Client()
    c = make_conn(broker, controller=ctl)
    closing.append(c)
    wait_for(lambda: ctl.offers, what="the resource offer")
    assert ctl.offers == [[]]  # ModelMinimal offers the connected nodes: none


def test_sessions_in_model(broker, closing):
    c = make_conn(broker)
    wait_for(lambda: c.session_id in broker.model.sessions, what="the session in the model")
    s = broker.model.sessions[c.session_id]
    assert isinstance(s, messidge.broker.bases.SessionMinimal) and s.rid == c.session_id
    c.disconnect()
    wait_for(lambda: not broker.model.sessions, what="the session's end")


def test_timeout(broker, closing):
    class Silent:
        def _hold(self, msg):
            self.kept = msg.keep()  # never replied to
        commands = {b'hold': cmd([], needs_reply=True)}
    b = make_broker(messidge.KeyPair.new(), Silent())
    closing.append(b)
    c = make_conn(b)
    closing.append(c)
    with pytest.raises(TimeoutError, match="no reply to 'hold' within 0.2 s"):
        c.send_blocking_cmd(b'hold', timeout=0.2)


def test_broker_send_cmd(broker, closing):
    class Client:
        def __init__(self):
            self.got = []

        def _pushed(self, msg):
            self.got.append((dict(msg.params), msg.bulk))
        commands = {b'pushed': client_cmd(['n'])}
    ctl = Client()
    c = make_conn(broker, controller=ctl)
    closing.append(c)
    wait_for(lambda: c.session_id in broker.model.sessions, what="the session in the model")
    broker.send_cmd(c.session_id, b'pushed', {'n': 1}, b'bulk')
    wait_for(lambda: ctl.got, what="the command the broker sent")
    assert ctl.got == [({'n': 1}, b'bulk')]
    # to a node: send_cmd takes its key as the rid
    node_keys = messidge.KeyPair.new()
    broker.allow(node_keys.public, ROLE_NODE)
    node_ctl = Client()
    closing.append(make_conn(broker, keys=node_keys, controller=node_ctl))
    wait_for(lambda: node_keys.public in broker.model.nodes, what="the node in the model")
    broker.send_cmd(node_keys.public, 'pushed', {'n': 2})
    wait_for(lambda: node_ctl.got, what="the command the broker sent the node")
    assert node_ctl.got == [({'n': 2}, None)] and len(ctl.got) == 1
    with pytest.raises(ValueError, match="a node's key is 32 bytes, not 5"):
        broker.send_node(b'short', 'pushed')
    with pytest.raises(messidge.Error, match="pushed: bad target or command"):
        broker.send_session(b'no such session', 'pushed', {'n': 2})
