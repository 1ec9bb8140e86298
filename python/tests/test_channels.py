"""Long-term channels: replies streamed to a reply callback, from the
handler and from another thread on a kept message."""
import threading

import pytest

from conftest import TIMEOUT, broker_and_conn, wait_for
from messidge.broker.broker import cmd


class Streams:
    def __init__(self):
        self.late = None

    def _count(self, msg):
        kept = msg.keep()  # replied to from another thread, after this returns

        def stream():
            for i in range(msg.params['n']):
                kept.reply_more({'i': i})
            kept.reply({'done': True})
        threading.Thread(target=stream).start()

    def _inline(self, msg):
        for i in range(3):
            msg.reply_more({'i': i})
        msg.reply({'done': True})

    def _not_kept(self, msg):
        self.late = msg  # not kept: no replies after this returns
        msg.reply({})

    commands = {b'count': cmd(['n'], needs_reply=True), b'inline': cmd([], needs_reply=True),
                b'not_kept': cmd([], needs_reply=True)}


@pytest.fixture
def setup(broker_keys, closing):
    ctl = Streams()
    _, c = broker_and_conn(broker_keys, ctl, closing)
    return ctl, c


def collect(conn, command, params=None):
    got = []
    done = threading.Event()

    def cb(msg):
        got.append(msg)
        if not msg.more:
            done.set()
    conn.send_cmd(command, params, reply_callback=cb)
    assert done.wait(TIMEOUT)
    return got


@pytest.mark.parametrize('n', [1, 1000])
def test_stream_from_thread(setup, n):
    ctl, c = setup
    got = collect(c, b'count', {'n': n})
    assert [m.params['i'] for m in got[:-1]] == list(range(n))
    assert all(m.more for m in got[:-1])
    assert got[-1].params == {'done': True} and not got[-1].more


def test_stream_from_handler(setup):
    ctl, c = setup
    got = collect(c, b'inline')
    assert [m.params.get('i') for m in got] == [0, 1, 2, None]


def test_blocking_call_takes_the_first(setup):
    ctl, c = setup
    assert c.send_blocking_cmd(b'inline').params == {'i': 0}
    assert c.send_blocking_cmd(b'count', {'n': 0}).params == {'done': True}


def test_reply_after_handler_needs_keep(setup):
    ctl, c = setup
    c.send_blocking_cmd(b'not_kept')
    wait_for(lambda: ctl.late is not None)
    with pytest.raises(RuntimeError, match="call msg.keep\\(\\) there to reply later"):
        ctl.late.reply({})
    assert ctl.late.command == 'not_kept'  # its contents stay readable
