#!/usr/bin/python3
"""Messidge 1.x peers for libmessidge's interop tests.

Subcommands (run with Debian's /usr/bin/python3):
  user    the guide's demo client (notes, exceptions, divide on every offered node)
  node    the guide's divide node (plus 'stream', long-term replies)
  broker  a stand-in for the 1.x Python broker with the original Python Messidge's notes controller
  keygen  write a key pair (and optionally .spub / default_location)

Everything a test checks goes to stdout, one flushed line at a time;
diagnostics go to stderr. Exit status 0 means success.
See messidge1.py for the protocol itself.
"""

import argparse
import collections
import os
import signal
import sys
import threading
import time

import cbor
import libnacl
import zmq

# no __pycache__ in the source tree when the C tests run this
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import messidge1 as m1  # noqa: E402


def say(text):
    print(text, flush=True)


class Failed(Exception):
    """A step of a peer did not happen as expected: 'FAIL: <why>', exit 1."""


def stop_on_signals():
    """An Event set by SIGTERM/SIGINT, so long-running peers exit 0 cleanly."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


# --------------------------------------------------------------------------
# user: the guide's demo client

class UserController:
    """Receives the broker's resource_offer (the original: Controller._resource_offer)."""

    def __init__(self):
        self.nodes = None
        self.offered = threading.Event()

    def _resource_offer(self, msg):
        self.nodes = msg.params['nodes']
        self.offered.set()

    commands = {b'resource_offer': (['nodes'], False)}


def wait_for_offer(conn, controller, want, deadline):
    """Wait for a resource_offer listing at least `want` nodes.

    The offer is sent once, at the start of a new session; if it lists too
    few nodes (a node still connecting) the only way to get another is a
    new session, so open one and look again until the deadline."""
    while True:
        left = deadline - time.time()
        conn.wait_until_ready(max(left, 0.1))
        if not controller.offered.wait(max(deadline - time.time(), 0.1)):
            raise Failed("no resource_offer from the broker")
        nodes = controller.nodes
        if not isinstance(nodes, list) or not all(isinstance(n, bytes) for n in nodes):
            raise Failed("resource_offer 'nodes' is not a list of byte strings: %r" % (nodes,))
        if len(nodes) >= want:
            return nodes
        if time.time() >= deadline:
            raise Failed("resource_offer lists %d node(s), expected at least %d" % (len(nodes), want))
        m1.log("offer lists %d node(s), want %d: asking again with a new session" % (len(nodes), want))
        time.sleep(0.5)
        controller.offered.clear()
        conn.reconnect(fresh=True)


def expect_value_error(call, expected_text, what):
    """Run a blocking call that must fail with an exception reply."""
    try:
        reply = call()
    except m1.BlockingTimeout as e:
        raise Failed("%s: no reply (%s)" % (what, e))
    except ValueError as e:
        say("Expected! ValueError raised because: " + str(e))
        if str(e) != expected_text:
            raise Failed("%s: exception text %r, expected %r" % (what, str(e), expected_text))
        return
    raise Failed("%s: no ValueError, got params %r" % (what, reply.params))


def blocking(conn, timeout, command, params=None, bulk=b''):
    try:
        return conn.send_blocking_cmd(command, params, bulk=bulk, timeout=timeout)
    except ValueError as e:
        raise Failed("%s: %s" % (command.decode(), e))


def run_user_demo(conn, nodes, timeout, stream_count):
    # an asynchronous command
    note = time.ctime(time.time())
    conn.send_cmd(b'write_note', {'note': note})

    # synchronous, and processed after write_note (same link, in order)
    reply = blocking(conn, timeout, b'fetch_notes')
    notes = reply.params.get('notes') if isinstance(reply.params, dict) else None
    say("Here are the notes: " + str(notes))
    if not isinstance(notes, list) or note not in notes:
        raise Failed("fetch_notes did not return the note just written (%r)" % note)

    # asynchronous via callback; the lock keeps the guide's line order
    # (the callback runs on the loop thread and could otherwise win the race)
    order = threading.Lock()
    called = threading.Event()
    seen = {}

    def async_callback(msg):
        with order:
            seen['notes'] = msg.params.get('notes') if isinstance(msg.params, dict) else None
            say("Async callback: " + str(seen['notes']))
        called.set()
    with order:
        conn.send_cmd(b'fetch_notes', reply_callback=async_callback)
        say("This will print before the async callback is triggered...")
    if not called.wait(timeout):
        raise Failed("the async fetch_notes callback never fired")
    if not isinstance(seen['notes'], list) or note not in seen['notes']:
        raise Failed("async fetch_notes did not return the note (%r)" % (seen['notes'],))

    # an exception raised by a broker handler comes back as ValueError
    expect_value_error(lambda: conn.send_blocking_cmd(b'raise_exception', timeout=timeout),
                       "raise_exception was called", "raise_exception")

    # every offered node, addressed by its pk
    for node_pk in nodes:
        reply = blocking(conn, timeout, b'divide', {'node': node_pk, 'dividend': 10.0, 'devisor': 5.0})
        quotient = reply.params.get('quotient') if isinstance(reply.params, dict) else None
        say("10.0/5.0=" + str(quotient))
        if quotient != 2.0:
            raise Failed("divide returned %r, expected 2.0" % (quotient,))

        expect_value_error(lambda: conn.send_blocking_cmd(
            b'divide', {'node': node_pk, 'dividend': 10.0, 'devisor': 0.0}, timeout=timeout),
            "Devisor cannot be zero", "divide by zero")

        reply = blocking(conn, timeout, b'divide',
                         {'node': node_pk, 'dividend': 10.0, 'devisor': 5.0}, bulk=b'BULK')
        # 1.x nodes put the reply's bulk in the command field too (spec 3.7)
        m1.log("bulk reply: command field %r, bulk %r" % (reply.command, reply.bulk))
        if reply.bulk != b'BULK' or reply.params.get('quotient') != 2.0:
            raise Failed("bulk divide: bulk %r, params %r" % (reply.bulk, reply.params))
        say("bulk reply ok")

        if stream_count:
            run_stream(conn, node_pk, stream_count, timeout)


def run_stream(conn, node_pk, count, timeout):
    """Long-term ('ka') replies: `count` replies to one command, in order."""
    got = []
    done = threading.Event()

    def on_reply(msg):
        got.append(msg)
        if len(got) >= count:
            done.set()
    conn.send_cmd(b'stream', {'node': node_pk, 'count': count}, reply_callback=on_reply)
    if not done.wait(timeout):
        raise Failed("stream: %d of %d replies arrived" % (len(got), count))
    time.sleep(0.2)  # any extra reply would be a routing bug
    indices = [m.params.get('i') if isinstance(m.params, dict) else None for m in got]
    if indices != list(range(count)):
        raise Failed("stream: replies %r, expected 0..%d in order" % (indices, count - 1))
    say("stream ok: %d replies" % count)


def as_user(location, prefix, port, timeout, expect_nodes, work):
    """Connect as a user from the key files for location, wait for an offer
    of expect_nodes nodes, run work(conn, nodes); exit status 0 or 1."""
    deadline = time.time() + timeout
    controller = UserController()
    conn = None
    try:
        keys = m1.read_keypair(prefix, location)
        spub = m1.read_key(os.path.join(prefix, location + '.spub'))
        conn = m1.Connection(location, port, keys=keys, server_pk=spub,
                             commands=UserController.commands, handler_obj=controller)
        try:
            conn.wait_until_ready(timeout)
        except (ValueError, TimeoutError) as e:
            raise Failed("handshake: %s" % e)
        work(conn, wait_for_offer(conn, controller, expect_nodes, deadline))
        return 0
    except (Failed, m1.KeyFileError, OSError) as e:
        say("FAIL: %s" % e)
        return 1
    finally:
        if conn is not None:
            conn.close()


def cmd_user(args):
    def demo(conn, nodes):
        say("resource offer: %d node(s)" % len(nodes))
        run_user_demo(conn, nodes, args.timeout, args.stream)
        say("user demo ok")
    return as_user(args.location, args.prefix, args.port, args.timeout, args.expect_nodes, demo)


# --------------------------------------------------------------------------
# node: the guide's divide node

class DivideNode:
    def _divide(self, msg):
        dividend, devisor = msg.params['dividend'], msg.params['devisor']
        if not isinstance(dividend, float) or not isinstance(devisor, float):
            raise ValueError("Divide only takes two floats.")
        if devisor == 0:
            raise ValueError("Devisor cannot be zero")
        # the bulk goes back as it came (and, as 1.x does, in the command field)
        msg.reply({'quotient': dividend / devisor}, bulk=msg.bulk)

    def _stream(self, msg):
        count = msg.params['count']
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("count must be a non-negative integer")
        for i in range(count):
            msg.reply({'i': i}, long_term=True)

    commands = {b'divide': (['dividend', 'devisor'], True),
                b'stream': (['count'], True)}


def cmd_node(args):
    stop = stop_on_signals()
    conn = None
    try:
        keys = m1.read_keypair(args.prefix, args.name)
        spk = m1.read_key(args.server_pk_file)
        conn = m1.Connection(args.location, args.port, keys=keys, server_pk=spk,
                             commands=DivideNode.commands, handler_obj=DivideNode())
        while not conn.ready.wait(0.2):
            if stop.is_set():
                return 0
        if conn.exception is not None:
            raise Failed("handshake: %s" % conn.exception)
        if not conn.is_node:
            m1.log("the broker answered as for a user: this link is encrypted")
        say("node ready")
        while not stop.wait(0.5):
            pass
        return 0
    except (Failed, m1.KeyFileError) as e:
        say("FAIL: %s" % e)
        return 1
    finally:
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------
# broker: a stand-in for the 1.x Python broker with the original Python Messidge's controller

class LRU:
    """lru.LRU(2048) as the 1.x long_term_forwards: least recently used goes."""

    def __init__(self, size):
        self.size = size
        self.d = collections.OrderedDict()

    def __contains__(self, key):
        return key in self.d

    def __getitem__(self, key):
        self.d.move_to_end(key)
        return self.d[key]

    def __setitem__(self, key, value):
        self.d[key] = value
        self.d.move_to_end(key)
        while len(self.d) > self.size:
            old, _ = self.d.popitem(last=False)
            m1.log("long-term forward evicted: %s" % old)


class Link:
    """What 1.x keeps per handshaken rid (rid_agent): kind, pk, session key."""

    def __init__(self, kind, pk, key):
        self.kind, self.pk, self.key = kind, pk, key


class Broker:
    # the original Python Messidge's MyController: {command: (required params, needs_reply, node_only)}
    COMMANDS = {b'write_note': (['note'], False, False),
                b'fetch_notes': ([], True, False),
                b'raise_exception': ([], True, False)}

    def __init__(self, pk, sk, users, nodes):
        self.pk, self.sk = pk, sk
        self.users, self.nodes = set(users), set(nodes)
        self.links = {}           # rid -> Link, for rids whose handshake was answered
        self.sessions = {}        # rid -> user pk (model.sessions); never cleaned, as 1.x
        self.node_pk_rid = {}     # insertion order = resource_offer order
        self.node_rid_pk = {}
        self.short_term = {}      # uuid -> rid of the caller
        self.long_term = LRU(2048)
        self.notes = {}           # user pk -> [note, ...]
        self.ctx = zmq.Context()
        self.skt = None

    def bind(self, port):
        self.skt = self.ctx.socket(zmq.ROUTER)
        self.skt.setsockopt(zmq.SNDHWM, 0)
        self.skt.setsockopt(zmq.RCVHWM, 0)
        self.skt.setsockopt(zmq.LINGER, 0)
        self.skt.bind("tcp://127.0.0.1:%s" % (port if port else '*'))
        endpoint = self.skt.getsockopt(zmq.LAST_ENDPOINT).decode()
        return int(endpoint.rsplit(':', 1)[1])

    def run(self, stop):
        poller = zmq.Poller()
        poller.register(self.skt, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(200):
                continue
            while True:
                try:
                    parts = self.skt.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) != 2:
                    m1.log("rid %s: %d-part message, 1.x frames are one part; dropped" %
                           (parts[0].hex(), len(parts) - 1))
                    continue
                try:
                    self.frame(parts[0], parts[1])
                except Exception as e:  # never let one frame stop the broker
                    m1.log("rid %s: frame caused %s: %s" % (parts[0].hex(), type(e).__name__, e))
        self.skt.close(0)
        self.ctx.term()

    # -- sending --

    def send_to(self, rid, command, uuid, params, bulk, plain_nonce=b''):
        """Users get a boxed frame under their session key (fresh nonce);
        nodes a plaintext one carrying plain_nonce (b'' when broker-made)."""
        link = self.links.get(rid)
        if link is None:
            m1.log("rid %s: no session, frame %s/%s dropped" % (rid.hex(), command, uuid))
            return
        if link.key is not None:
            data = m1.seal_frame(command, uuid, params, bulk, link.key)
        else:
            data = m1.seal_frame(command, uuid, params, bulk, None, nonce=plain_nonce)
        self.skt.send_multipart([rid, data])

    def reply(self, rid, uuid, results, bulk):
        # 1.x BrokerMessage.reply keeps the request's bulk when given none
        self.send_to(rid, b'', uuid, results, bulk)

    # -- receiving --

    def frame(self, rid, data):
        link = self.links.get(rid)
        if link is None:
            self.handshake(rid, data)
            return
        try:
            nonce, command, uuid, params, bulk = m1.parse_frame(data)
        except m1.FrameError as e:
            m1.log("rid %s: dropped: %s" % (rid.hex(), e))
            return
        if link.key is not None:
            try:
                params, bulk = m1.open_fields(nonce, params, bulk, link.key)
            except m1.FrameError as e:
                # 1.x: the agent's failed decrypt leaves params None, which the
                # dictionary check below turns into an exception reply
                m1.log("rid %s: %s" % (rid.hex(), e))
                params, bulk = None, b''
        self.event(rid, link, nonce, command, uuid, params, bulk)

    def handshake(self, rid, data):
        try:
            nonce, command, uuid, params, bulk = m1.parse_frame(data)
        except m1.FrameError as e:
            m1.log("rid %s: first frame dropped: %s" % (rid.hex(), e))
            return
        pk = params.get('user') if isinstance(params, dict) else None
        if command != b'auth':
            m1.log("rid %s: first frame is %s, not auth: refused" % (rid.hex(), command))
        elif not isinstance(pk, bytes):
            m1.log("rid %s: auth without a 'user' key: refused" % rid.hex())
        elif pk in self.users:
            self.user_session(rid, pk, params.get('rid', b''))
            return
        elif pk in self.nodes:
            self.node_session(rid, pk)
            return
        else:
            m1.log("rid %s: unknown key %s: refused" % (rid.hex(), m1.key_text(pk).decode()
                                                            if len(pk) == 32 else pk.hex()))
        # spec 3.5: a plain 5-element frame; nothing is remembered for the rid,
        # so the peer may try again on the same connection
        self.skt.send_multipart([rid, cbor.dumps([b'', b'', uuid, {}, b''])])

    def user_session(self, rid, pk, old_rid):
        recovered = False
        try:
            recovered = old_rid in self.sessions
        except TypeError:  # an unhashable 'rid'
            pass
        if recovered:
            # 1.x does not compare the pk with the session's (spec 6)
            m1.log("Recovering session: %s -> %s" % (old_rid.hex(), rid.hex()))
            self.sessions[rid] = self.sessions.pop(old_rid)
        else:
            self.sessions[rid] = pk
            m1.log("Connected session: %s" % rid.hex())
        key = libnacl.randombytes(m1.KEY_BYTES)  # fresh for every handshake
        self.links[rid] = Link('user', pk, key)
        nonce = libnacl.randombytes(m1.NONCE_BYTES)
        box = libnacl.crypto_box(key, nonce, pk, self.sk)
        self.skt.send_multipart([rid, cbor.dumps([nonce, box, rid])])
        if not recovered:
            self.send_to(rid, b'resource_offer', b'', {'nodes': list(self.node_pk_rid)}, b'')

    def node_session(self, rid, pk):
        old = self.node_pk_rid.get(pk)
        if old is not None:
            # the newest connection with this pk wins; the old rid is forgotten
            self.node_rid_pk.pop(old, None)
            self.links.pop(old, None)
            m1.log("Reconnected node: %s (%s -> %s)" % (m1.key_text(pk).decode(), old.hex(), rid.hex()))
        else:
            m1.log("Connected node pk: %s (%s)" % (m1.key_text(pk).decode(), rid.hex()))
        self.node_pk_rid[pk] = rid
        self.node_rid_pk[rid] = pk
        self.links[rid] = Link('node', pk, None)
        self.skt.send_multipart([rid, cbor.dumps([b'', b'', rid])])

    def event(self, rid, link, nonce, command, uuid, params, bulk):
        try:
            if not isinstance(params, dict):
                raise ValueError("Message parameters must be a dictionary.")

            # replies are recognised by uuid alone, before anything else
            if uuid in self.short_term or uuid in self.long_term:
                self.forward_reply(rid, nonce, command, uuid, params, bulk)
                return

            # context, overwriting whatever the sender claimed
            if link.kind == 'node':
                params['node'] = link.pk
            else:
                params['user'] = link.pk
                params['session'] = rid

            spec = self.COMMANDS.get(command)
            if spec is not None:
                required, needs_reply, node_only = spec
                if needs_reply and uuid == b'':
                    raise ValueError("Message needs to be replyable for: " + str(command))
                if node_only and link.kind != 'node':
                    raise ValueError("This call is for nodes only")
                for necessary in required:
                    if necessary not in params:
                        raise ValueError("Necessary parameter was not passed: " + necessary)
                getattr(self, '_' + command.decode())(rid, uuid, params, bulk)
                return

            self.forward_to_node(rid, nonce, command, uuid, params, bulk)
        except ValueError as e:
            m1.log("Client %s called %s and raised a ValueError: %s" % (rid.hex(), command, e))
            # 1.x replies even when uuid is b'' (it does not check replyable)
            self.reply(rid, uuid, {'exception': str(e)}, bulk)

    def forward_to_node(self, rid, nonce, command, uuid, params, bulk):
        if 'node' not in params:
            raise ValueError("No node address or invalid: " + str(command))
        node_pk = params.pop('node')
        if uuid != b'':
            # recorded before the node is looked up, as 1.x does
            self.short_term[uuid] = rid
        try:
            dest = self.node_pk_rid[node_pk]
        except (KeyError, TypeError):
            raise ValueError("No node address or invalid: " + str(command))
        # plaintext, with the caller's own nonce
        self.skt.send_multipart([dest, m1.seal_frame(command, uuid, params, bulk, None, nonce=nonce)])

    def forward_reply(self, rid, nonce, command, uuid, params, bulk):
        dest = rid  # a non-ka frame known only long-term goes back to its sender (1.x)
        if uuid in self.short_term:
            dest = self.short_term.pop(uuid)
        if command == b'ka':
            command = b''
            if dest not in self.links:
                m1.log("uuid %s wanted long-term forwarding but %s has gone" % (uuid, dest.hex()))
                return
            if uuid not in self.long_term:
                # 1.x calls forwarding_insert_callback (None by default) here and
                # the broker dies; this stand-in only records the route
                self.long_term[uuid] = dest
                m1.log("long-term forwarding: %s -> %s" % (uuid, dest.hex()))
            else:
                dest = self.long_term[uuid]
        if dest not in self.links:
            m1.log("reply %s for a disconnected session %s dropped" % (uuid, dest.hex()))
            return
        self.send_to(dest, command, uuid, params, bulk, plain_nonce=nonce)

    # -- the original Python Messidge's controller --

    def _write_note(self, rid, uuid, params, bulk):
        if 'user' not in params:
            m1.log("write_note from a node ignored (1.x would fail on params['user'])")
            return
        self.notes.setdefault(params['user'], []).append(params['note'])

    def _fetch_notes(self, rid, uuid, params, bulk):
        if 'user' not in params:
            m1.log("fetch_notes from a node ignored (1.x would fail on params['user'])")
            return
        self.reply(rid, uuid, {'notes': self.notes.get(params['user'], [])}, bulk)

    def _raise_exception(self, rid, uuid, params, bulk):
        raise ValueError("raise_exception was called")


def cmd_broker(args):
    stop = stop_on_signals()
    try:
        if args.write_keys:
            pk, sk = m1.new_keypair()
            m1.write_keypair(args.prefix, args.name, pk, sk)
        else:
            pk, sk = m1.read_keypair(args.prefix, args.name)
        users = [m1.read_key(f) for f in args.user_pub]
        nodes = [m1.read_key(f) for f in args.node_pub]
    except m1.KeyFileError as e:
        say("FAIL: %s" % e)
        return 1
    broker = Broker(pk, sk, users, nodes)
    try:
        port = broker.bind(args.port)
    except zmq.ZMQError as e:
        say("FAIL: cannot bind port %s: %s" % (args.port, e))
        return 1
    m1.log("broker pk %s, %d user key(s), %d node key(s)" %
           (m1.key_text(pk).decode(), len(users), len(nodes)))
    say("READY %d" % port)
    broker.run(stop)
    return 0


# --------------------------------------------------------------------------
# create-account and divide: the 1.x quickstart of a user

def cmd_create_account(args):
    """1.x's create_account: a new key pair for the location, then
    POST "<token> <pk>" to the account server; the answer is the broker's
    public key (or a text starting "Fail:")."""
    import base64
    import urllib.error
    import urllib.request
    try:
        pk, sk = m1.new_keypair()
        m1.write_keypair(args.prefix, args.location, pk, sk)
        body = ("%s %s" % (args.token, m1.key_text(pk).decode())).encode()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        url = "http://%s:%d/" % (args.location, args.port)
        try:
            with opener.open(urllib.request.Request(url, data=body, method='POST'), timeout=10) as r:
                reply = r.read().decode()
        except urllib.error.HTTPError as e:  # libmessidge answers refusals with a 4xx status
            reply = e.read().decode()
        if reply.startswith("Fail:") or not reply:
            say(reply or "FAIL: empty answer")
            return 1
        m1.write_location(args.prefix, args.location, base64.b64decode(reply.strip()))
    except (m1.KeyFileError, OSError, ValueError) as e:
        say("FAIL: %s" % e)
        return 1
    say("account created at %s" % args.location)
    return 0


def cmd_divide(args):
    """From the key files create-account left: divide 10 by 5 on every
    node offered."""
    def divide(conn, nodes):
        for node in nodes:
            reply = blocking(conn, args.timeout, b'divide', {'node': node, 'dividend': 10.0, 'devisor': 5.0})
            say("10.0/5.0=" + str(reply.params['quotient']))
    try:
        location = args.location or m1.default_location(args.prefix)
    except OSError as e:
        say("FAIL: %s" % e)
        return 1
    return as_user(location, args.prefix, args.port, args.timeout, 1, divide)

# --------------------------------------------------------------------------
# keygen

def cmd_keygen(args):
    try:
        pk, sk = m1.new_keypair()
        m1.write_keypair(args.prefix, args.name, pk, sk)
        if args.server_pub:
            m1.write_location(args.prefix, args.name, m1.read_key(args.server_pub))
    except (m1.KeyFileError, OSError) as e:
        say("FAIL: %s" % e)
        return 1
    say("KEY %s" % m1.key_text(pk).decode())
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="Messidge 1.x peers for interop tests.")
    sub = parser.add_subparsers(dest='cmd', required=True)

    p = sub.add_parser('user', help="run the guide's demo client")
    p.add_argument('--prefix', required=True, help="directory holding LOC, LOC.pub, LOC.spub")
    p.add_argument('--location', required=True, help="broker host, also the key files' name")
    p.add_argument('--port', type=int, default=m1.DEFAULT_PORT)
    p.add_argument('--expect-nodes', type=int, default=1, help="nodes the offer must list (default 1)")
    p.add_argument('--timeout', type=float, default=20.0, help="seconds per wait (default 20)")
    p.add_argument('--stream', type=int, default=0, metavar='N',
                   help="also ask each node for N long-term replies (default 0: off)")

    p = sub.add_parser('node', help="run the guide's divide node")
    p.add_argument('--prefix', required=True)
    p.add_argument('--name', required=True, help="key pair NAME and NAME.pub in --prefix")
    p.add_argument('--server-pk-file', required=True, help="the broker's public key file")
    p.add_argument('--location', required=True, help="broker host")
    p.add_argument('--port', type=int, default=m1.DEFAULT_PORT)

    p = sub.add_parser('broker', help="run a 1.x broker with the original Python Messidge's notes controller")
    p.add_argument('--prefix', required=True)
    p.add_argument('--name', required=True, help="broker key pair NAME and NAME.pub in --prefix")
    p.add_argument('--port', type=int, required=True, help="0 picks a free port")
    p.add_argument('--user-pub', nargs='+', action='extend', default=[], metavar='FILE')
    p.add_argument('--node-pub', nargs='+', action='extend', default=[], metavar='FILE')
    p.add_argument('--write-keys', action='store_true', help="generate the broker key pair first")

    p = sub.add_parser('keygen', help="write a key pair NAME, NAME.pub into --prefix")
    p.add_argument('--prefix', required=True)
    p.add_argument('--name', required=True)
    p.add_argument('--server-pub', metavar='FILE',
                   help="also write NAME.spub (this broker key) and default_location = NAME")

    p = sub.add_parser('create-account', help="1.x create_account against an account server")
    p.add_argument('--prefix', required=True)
    p.add_argument('--location', required=True, help="broker host, also the key files' name")
    p.add_argument('--port', type=int, required=True, help="the account server's port")
    p.add_argument('--token', required=True)

    p = sub.add_parser('divide', help="divide 10 by 5 on every offered node, from create-account's files")
    p.add_argument('--prefix', required=True)
    p.add_argument('--location', help="default: the prefix's default_location")
    p.add_argument('--port', type=int, default=m1.DEFAULT_PORT)
    p.add_argument('--timeout', type=float, default=20.0)

    args = parser.parse_args(argv)
    return {'user': cmd_user, 'node': cmd_node, 'broker': cmd_broker, 'keygen': cmd_keygen,
            'create-account': cmd_create_account, 'divide': cmd_divide}[args.cmd](args)


if __name__ == '__main__':
    sys.exit(main())
