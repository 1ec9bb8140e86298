"""Threads and the GIL: handlers on the loop thread, blocking calls that
release the GIL, a blocking call nested in a handler, Ctrl-C ending a
blocking call in the main thread, and no leaks over 100,000 calls."""
import gc
import os
import resource
import signal
import threading
import time

import pytest

from conftest import TIMEOUT, broker_and_conn, make_conn, wait_for
from messidge import KeyPair
from messidge.broker.broker import cmd
from messidge.client.connection import Connection, cmd as node_cmd


class Ctl:
    def __init__(self):
        self.held = threading.Event()
        self.kept = []
        self.threads = set()

    def _echo(self, msg):
        self.threads.add(threading.get_ident())
        msg.reply(msg.params, bulk=msg.bulk)

    def _hold(self, msg):
        self.kept.append(msg.keep())  # answered later, or never
        self.held.set()

    commands = {b'echo': cmd([], needs_reply=True), b'hold': cmd([], needs_reply=True)}


@pytest.fixture
def setup(broker_keys, closing):
    ctl = Ctl()
    b, c = broker_and_conn(broker_keys, ctl, closing)
    return ctl, b, c


def test_handlers_on_the_loop_thread(setup):
    ctl, b, c = setup
    c.send_blocking_cmd(b'echo')
    assert len(ctl.threads) == 1 and threading.get_ident() not in ctl.threads


def test_blocking_call_releases_the_gil(setup):
    ctl, b, c = setup
    counted = []
    stop = threading.Event()

    def count():
        n = 0
        while not stop.is_set():
            n += 1
        counted.append(n)

    def answer_later():
        ctl.held.wait(TIMEOUT)
        time.sleep(0.2)  # the call stays blocked meanwhile: that is the point
        ctl.kept[0].reply({'late': True})
    t1 = threading.Thread(target=count)
    t2 = threading.Thread(target=answer_later)
    t1.start()
    t2.start()
    assert c.send_blocking_cmd(b'hold', timeout=TIMEOUT).params == {'late': True}
    stop.set()
    t1.join()
    t2.join()
    assert counted[0] > 1000  # Python ran on other threads while we waited


def test_nested_blocking_call_in_a_handler(setup, closing):
    ctl, b, user = setup
    node_keys = KeyPair.new()
    b.allow(node_keys.public, 2)  # as a node

    class NodeCtl:
        def _relay(self, msg):
            # a blocking call from the node's own loop thread, to the broker
            r = node.send_blocking_cmd(b'echo', {'x': msg.params['x'] * 2}, timeout=TIMEOUT)
            msg.reply({'y': r.params['x']})
        commands = {b'relay': node_cmd(['x'], needs_reply=True)}
    node = make_conn(b, keys=node_keys, controller=NodeCtl(), reflect_value_errors=True)
    closing.append(node)
    assert user.send_blocking_cmd(b'relay', {'node': node_keys.public, 'x': 21},
                                  timeout=TIMEOUT).params == {'y': 42}

    # and one nested in a reply callback
    got = []
    done = threading.Event()

    def cb(msg):
        got.append(user.send_blocking_cmd(b'echo', {'z': 1}, timeout=TIMEOUT).params['z'])
        done.set()
    user.send_cmd(b'echo', reply_callback=cb)
    assert done.wait(TIMEOUT) and got == [1]


def test_ctrl_c_ends_a_blocking_call(setup):
    ctl, b, c = setup
    assert threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=lambda: (ctl.held.wait(TIMEOUT),
                                          os.kill(os.getpid(), signal.SIGINT))).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            c.send_blocking_cmd(b'hold')  # no timeout: only Ctrl-C ends it
        assert time.monotonic() - t0 < TIMEOUT
        # the connection is fine afterwards; the late reply is dropped
        ctl.kept[0].reply({})
        assert c.send_blocking_cmd(b'echo', {'a': 1}, timeout=TIMEOUT).params['a'] == 1

        # Ctrl-C in a broker's run(), as the guide's broker expects
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            b.run()
        assert c.send_blocking_cmd(b'echo', {'a': 2}, timeout=TIMEOUT).params['a'] == 2
    finally:
        signal.signal(signal.SIGINT, old)


def rss_kib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def test_no_leaks_over_100000_calls(setup):
    ctl, b, c = setup
    params = {'s': 'text', 'b': b'\x01' * 16, 'l': [1, 2.5, None], 'm': {'k': True}}

    def calls(n):
        for i in range(n):
            r = c.send_blocking_cmd(b'echo', params, bulk=b'x' * 64, timeout=TIMEOUT)
            assert r.params['s'] == 'text'
        done = threading.Event()
        left = [1000]

        def cb(msg):
            left[0] -= 1
            if not left[0]:
                done.set()
        for i in range(1000):
            c.send_cmd(b'echo', params, reply_callback=cb)
        assert done.wait(TIMEOUT)

    calls(5000)  # warm up: allocator pools, the library's maps
    gc.collect()
    objects, rss = len(gc.get_objects()), rss_kib()
    calls(100000)
    gc.collect()
    grown_objects, grown_rss = len(gc.get_objects()) - objects, rss_kib() - rss
    # a leaked Message, dict or bytes per call would be 100,000 objects and
    # tens of MB; allow for noise only
    assert grown_objects < 1000, grown_objects
    assert grown_rss < 8 * 1024, "RSS grew by %d KiB over 100,000 calls" % grown_rss


def test_loop_threads_leave_no_thread_states(setup):
    """A library thread keeps one Python thread state while it runs (not
    one per callback): it goes when the thread ends, so connections and
    brokers opened and closed leave none behind."""
    from messidge import _core
    ctl, b, c = setup
    c.send_blocking_cmd(b'echo', timeout=TIMEOUT)
    before = _core._thread_states()
    for i in range(20):
        other = make_conn(b)
        got = threading.Event()
        other.send_cmd(b'echo', reply_callback=lambda msg: got.set())
        assert got.wait(TIMEOUT)
        assert other.send_blocking_cmd(b'echo', {'i': i}, timeout=TIMEOUT).params['i'] == i
        other.disconnect()
    wait_for(lambda: _core._thread_states() <= before, what="the loop threads' states freed")


def test_closing_from_a_handler_and_another_thread(setup, closing):
    """A node's handler disconnects it (its loop thread cannot join itself:
    a thread of its own closes it) while the main thread waits for the end,
    as the guide's Node.run() does; and a connection closed by another
    thread while this one waits in it."""
    ctl, b, user = setup
    node_keys = KeyPair.new()
    b.allow(node_keys.public, 2)

    class NodeCtl:
        def _shutdown(self, msg):
            node.disconnect()
        commands = {b'shutdown': node_cmd([])}
    node = make_conn(b, keys=node_keys, controller=NodeCtl())
    user.send_cmd(b'shutdown', {'node': node_keys.public})
    assert node.wait_until_complete(TIMEOUT) is True
    assert node.closed

    other = make_conn(b)
    threading.Timer(0.1, other.disconnect).start()
    assert other.wait_until_complete(TIMEOUT) is True



def test_broker_stopped_from_its_handler(tmp_path):
    """broker.stop() from a handler: its loop thread cannot join itself, so
    a thread of its own closes it; run() in another thread returns, and
    the client learns the broker has gone."""
    from messidge.broker.bases import ModelMinimal
    from messidge.broker.broker import Broker

    class Halt:
        def _halt(self, msg):
            broker.stop()
        commands = {b'halt': cmd([])}
    user = KeyPair.new()
    broker = Broker(KeyPair.new(), ModelMinimal(), controller=Halt(), port=0,
                    bind_address='127.0.0.1', state_dir=str(tmp_path / 'state'), accounts=False)
    broker.identity.add_user('u@example.com', user.public)
    runner = threading.Thread(target=broker.run)
    runner.start()
    wait_for(lambda: broker.port, what="the broker bound")
    c = Connection('127.0.0.1', server_pk=broker.keys.public, keys=user, port=broker.port,
                   reconnect_max_ms=200)
    try:
        c.start().wait_until_ready(TIMEOUT)
        c.send_cmd(b'halt')
        runner.join(TIMEOUT)
        assert not runner.is_alive()
        wait_for(lambda: broker.port == 0, what="the broker closed")
    finally:
        c.disconnect()
