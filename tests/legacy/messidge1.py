"""Messidge 1.x wire protocol, as the original Python peers speak it.

Interop partner for libmessidge's compatibility mode, written from
the 1.3.1 wire format of the original Python Messidge (the layout is in
src/legacy.h and docs/compatibility.md). Only Debian's
python3-zmq, python3-libnacl and python3-cbor are used, so that the C tests
can run it with /usr/bin/python3 and nothing installed by pip.

What is here:
  * key files (44 bytes of base64 text, no newline) and key pairs;
  * frame helpers shared by the peers and the stand-in broker (peer.py);
  * Connection: the 1.x client/node connection (one DEALER, a background
    loop thread, handshake, send_cmd / send_blocking_cmd, a command table,
    reply callbacks, session recovery).

The wire is kept byte for byte as the original's, quirks included (the
bulk in the command field of Message.reply, same nonce for params and bulk,
plaintext node links). Where the original would crash or loop, this code logs
a line on stderr instead: the tests need the peer alive to judge the other side.
"""

import base64
import collections
import os
import sys
import threading
import uuid as _uuid

import cbor
import libnacl
import zmq
from zmq.utils.monitor import recv_monitor_message

NONCE_BYTES = 24
KEY_BYTES = 32
DEFAULT_PORT = 2020


def log(text):
    """One line on stderr: the tests read stdout, people read stderr."""
    print("messidge1[%d]: %s" % (os.getpid(), text), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Keys and key files (spec section 9)

class KeyFileError(RuntimeError):
    """A key file is missing or does not hold a 32-byte key."""


def raw_key(key):
    """Accept a key as 32 raw bytes or as its 44-char base64 text."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, (bytes, bytearray)) and len(key) == KEY_BYTES:
        return bytes(key)
    try:
        raw = base64.b64decode(bytes(key).strip(), validate=True)
    except Exception:
        raise KeyFileError("not a key: %r" % (key,))
    if len(raw) != KEY_BYTES:
        raise KeyFileError("a key must be 32 bytes, got %d" % len(raw))
    return raw


def key_text(raw):
    """The file form of a key: standard base64, 44 bytes, no newline."""
    return base64.b64encode(raw_key(raw))


def read_key(path):
    """Read a 44-byte base64 key file; a trailing newline is tolerated."""
    try:
        with open(os.path.expanduser(path), 'rb') as f:
            text = f.read()
    except OSError as e:
        raise KeyFileError("cannot read key file %s: %s" % (path, e.strerror))
    try:
        return raw_key(text.strip(b'\r\n'))
    except KeyFileError as e:
        raise KeyFileError("%s: %s" % (path, e))


def write_key(path, raw, secret=False):
    """Write a key file exactly as 1.x does: base64, no newline.

    Secret keys get mode 0600 (1.x used the umask; the mode is not part of
    the wire, so there is no reason to copy that weakness)."""
    path = os.path.expanduser(path)
    mode = 0o600 if secret else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'wb') as f:
        f.write(key_text(raw))
    os.chmod(path, mode)


def new_keypair():
    """A fresh Curve25519 pair (pk, sk), 32 raw bytes each."""
    return libnacl.crypto_box_keypair()


def write_keypair(prefix, name, pk, sk):
    """<prefix>/<name> (secret) and <prefix>/<name>.pub, like KeyPair.new."""
    prefix = os.path.expanduser(prefix)
    os.makedirs(prefix, exist_ok=True)
    write_key(os.path.join(prefix, name + '.pub'), pk)
    write_key(os.path.join(prefix, name), sk, secret=True)


def read_keypair(prefix, name):
    """(pk, sk) from <prefix>/<name>.pub and <prefix>/<name>."""
    prefix = os.path.expanduser(prefix)
    return (read_key(os.path.join(prefix, name + '.pub')),
            read_key(os.path.join(prefix, name)))


def write_location(prefix, location, server_pk):
    """What create_account leaves behind: <location>.spub and default_location."""
    prefix = os.path.expanduser(prefix)
    os.makedirs(prefix, exist_ok=True)
    write_key(os.path.join(prefix, location + '.spub'), server_pk)
    with open(os.path.join(prefix, 'default_location'), 'w') as f:
        f.write(location)


def default_location(prefix='~/.messidge'):
    with open(os.path.join(os.path.expanduser(prefix), 'default_location')) as f:
        return f.read().strip('\n')


# --------------------------------------------------------------------------
# Identifiers

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def short_uuid():
    """shortuuid.uuid() as bytes: a random uuid4 in base57, 22 ASCII chars."""
    n = _uuid.uuid4().int
    digits = []
    while n:
        n, d = divmod(n, len(_ALPHABET))
        digits.append(_ALPHABET[d])
    digits += [_ALPHABET[0]] * (22 - len(digits))
    return ''.join(reversed(digits)).encode()


# --------------------------------------------------------------------------
# Frames (spec section 3)

class FrameError(ValueError):
    """A frame that is not a well formed 1.x frame."""


def seal_frame(command, uuid, params, bulk, session_key, nonce=None):
    """Build one normal frame [nonce, command, uuid, params, bulk].

    With a session key params (always) and bulk (when not empty) are boxed
    with the same nonce, as 1.x does; without, params go as a bare CBOR item
    and bulk raw. A nonce is generated unless the caller has one to keep
    (the broker forwards a user's nonce to the node)."""
    if nonce is None:
        nonce = libnacl.randombytes(NONCE_BYTES)
    if session_key is not None:
        params = libnacl.crypto_secretbox(cbor.dumps(params), nonce, session_key)
        bulk = libnacl.crypto_secretbox(bulk, nonce, session_key) if bulk != b'' else b''
    return cbor.dumps([nonce, command, uuid, params, bulk])


def parse_frame(data):
    """Decode one frame into (nonce, command, uuid, params, bulk), not opened."""
    try:
        parts = cbor.loads(data)
    except Exception as e:  # the cbor module raises several types
        raise FrameError("not CBOR (%s)" % e)
    if not isinstance(parts, list) or len(parts) != 5:
        raise FrameError("not a 5-element array: %s" % _short(parts))
    nonce, command, uuid, params, bulk = parts
    for name, value in (('nonce', nonce), ('command', command), ('uuid', uuid), ('bulk', bulk)):
        if not isinstance(value, bytes):
            raise FrameError("%s is not a byte string: %s" % (name, _short(value)))
    return nonce, command, uuid, params, bulk


def open_fields(nonce, params, bulk, session_key):
    """Undo seal_frame's boxes; raises FrameError when they do not open."""
    if not isinstance(params, bytes):
        raise FrameError("params are not a box on an encrypted link")
    if len(nonce) != NONCE_BYTES:
        raise FrameError("nonce is %d bytes" % len(nonce))
    try:
        params = cbor.loads(libnacl.crypto_secretbox_open(params, nonce, session_key))
        bulk = libnacl.crypto_secretbox_open(bulk, nonce, session_key) if bulk != b'' else b''
    except Exception as e:
        raise FrameError("cannot open: %s" % e)
    return params, bulk


def auth_frame(pk, rid=b''):
    """The handshake request (spec 3.2), identical for users and nodes."""
    return cbor.dumps([b'', b'auth', b'', {'user': pk, 'rid': rid}, b''])


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


# --------------------------------------------------------------------------
# Messages and the connection (the 1.x client, used for users and nodes)

class BlockingTimeout(ValueError):
    """send_blocking_cmd got no reply in time. A ValueError as in 1.x, but
    its own type so callers can tell it from an exception reply."""


class Message:
    """A received frame, opened; handlers may reply to it."""

    def __init__(self, conn, nonce, command, uuid, params, bulk):
        self.conn = conn
        self.nonce = nonce
        self.command = command
        self.uuid = uuid
        self.params = params
        self.bulk = bulk

    def replyable(self):
        return self.uuid != b''

    def reply(self, results=None, bulk=b'', long_term=False):
        """Reply as 1.x Message.reply does: the command field carries b'ka'
        for a long-term reply, otherwise the bulk itself (in clear)."""
        if not self.replyable():
            log("tried to reply to a non-replyable message: %r" % self)
            return
        if results is None:
            results = {}
        self.conn._send_frame(b'ka' if long_term else bulk, self.uuid, results, bulk)

    def __repr__(self):
        return "<messidge.message.Message object at %x (command=%s uuid=%s params=%s)>" % \
               (id(self), self.command, str(self.uuid), self.params)


class Connection:
    """A 1.x connection onto a broker, for a user or a node.

    Whether it is a node or a user is decided by the broker's handshake
    answer (an empty box means a plaintext node link). A background thread
    owns the DEALER socket; any thread may send. Handlers and reply
    callbacks run on that thread.

    commands: {b'name': (required_params, needs_reply[, handler])}; without
    a handler in the tuple, handler_obj._name is called (as 1.x does)."""

    def __init__(self, location, port=DEFAULT_PORT, keys=None, server_pk=None, prefix=None,
                 commands=None, handler_obj=None, reflect_value_errors=True, start=True):
        if keys is None or server_pk is None:
            if prefix is None:
                raise KeyFileError("no keys given and no prefix to read them from")
        if keys is None:
            keys = read_keypair(prefix, location)
        if server_pk is None:
            server_pk = read_key(os.path.join(os.path.expanduser(prefix), location + '.spub'))
        self.pk, self.sk = raw_key(keys[0]), raw_key(keys[1])
        self.server_pk = raw_key(server_pk)
        self.endpoint = "tcp://%s:%d" % (location, int(port))
        self.reflect_value_errors = reflect_value_errors

        self.commands = {}
        if commands:
            self.register_commands(handler_obj, commands)
        self.connect_callbacks = []

        # state owned by the loop thread (read elsewhere only for reporting)
        self.rid = b''                # rid the broker gave us; sent back on reconnect
        self.session_key = None       # None = plaintext (node) link
        self.is_node = None
        self.handshakes = 0
        self.exception = None         # handshake failure, raised in wait_until_ready
        self.ready = threading.Event()
        self._live = False            # handshake answered on the current socket
        self._awaiting_answer = False
        self._failed = False
        self._backlog = []            # frames held until the handshake is answered
        self._reply_callbacks = {}    # uuid -> callback; never removed for send_cmd (as 1.x)

        # other threads hand work to the loop thread through a deque and wake
        # it through a pipe, so no zmq socket is ever shared between threads
        self._outq = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = False
        self._ctx = zmq.Context()
        self._skt = None
        self._mon = None
        self._poller = zmq.Poller()
        self._loop_ident = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="messidge1 loop")
        if start:
            self.start()

    # -- public API ---------------------------------------------------------

    def register_commands(self, obj, commands):
        for name, spec in commands.items():
            if not isinstance(name, bytes):
                raise RuntimeError("Pass commands as bytes, not strings")
            required, needs_reply = spec[0], spec[1]
            handler = spec[2] if len(spec) > 2 else getattr(obj, '_' + name.decode())
            self.commands[name] = (list(required), bool(needs_reply), handler)

    def register_connect_callback(self, callback):
        """callback(rid) on the loop thread after every answered handshake."""
        self.connect_callbacks.append(callback)

    def start(self):
        self._thread.start()
        return self

    def wait_until_ready(self, timeout=30):
        """Block until the handshake is answered; raises its failure."""
        if not self.ready.wait(timeout):
            raise TimeoutError("no handshake answer from %s within %gs" % (self.endpoint, timeout))
        if self.exception is not None:
            raise self.exception
        return self

    def send_cmd(self, command, params=None, bulk=b'', reply_callback=None, uuid=b''):
        """Send a command; a reply_callback makes it replyable (uuid made here)."""
        if not isinstance(command, bytes):
            raise RuntimeError("Need to pass a command (bytes) to send_cmd.")
        if reply_callback is not None:
            if uuid == b'':
                uuid = short_uuid()
            # registered before sending, so the reply cannot beat it
            self._reply_callbacks[uuid] = reply_callback
        self._send_frame(command, uuid, {} if params is None else params, bulk)
        return uuid

    def send_blocking_cmd(self, command, params=None, bulk=b'', timeout=10):
        """Send and wait for the reply Message. An exception reply raises
        ValueError(text); no reply in time raises BlockingTimeout."""
        if threading.get_ident() == self._loop_ident:
            raise RuntimeError("Cannot send a blocking command on the loop thread")
        uuid = short_uuid()
        done = threading.Event()
        box = {}

        def unblock(msg):
            box['msg'] = msg
            self._reply_callbacks.pop(uuid, None)
            done.set()

        self.send_cmd(command, params, bulk, reply_callback=unblock, uuid=uuid)
        if not done.wait(timeout):
            self._reply_callbacks.pop(uuid, None)
            raise BlockingTimeout("Blocking call timed out: %s(%s)" %
                                  (command.decode(errors='replace'), str(params)))
        msg = box['msg']
        if isinstance(msg.params, dict) and 'exception' in msg.params:
            raise ValueError(msg.params['exception'])
        return msg

    def reconnect(self, fresh=False):
        """Open a new socket and handshake again: with the previous rid
        (session recovery, spec 6) or, when fresh, with b'' (a new session)."""
        self.ready.clear()
        self._post(('reconnect', fresh))

    def send_raw(self, data):
        """Put bytes on the wire as one frame, now, handshake or not (tests)."""
        self._post(('raw', bytes(data)))

    def close(self):
        self._stop = True
        self._wake()
        if self._thread.is_alive() and threading.get_ident() != self._loop_ident:
            self._thread.join(5)
        if not self._thread.is_alive():
            self._ctx.destroy(linger=0)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- hand-over to the loop thread ---------------------------------------

    def _send_frame(self, command, uuid, params, bulk):
        self._post(('frame', command, uuid, params, bulk))

    def _post(self, item):
        if threading.get_ident() == self._loop_ident:
            self._handle_item(item)
        else:
            self._outq.append(item)
            self._wake()

    def _wake(self):
        try:
            os.write(self._wake_w, b'.')
        except OSError:
            pass

    # -- the loop thread ----------------------------------------------------

    def _run(self):
        self._loop_ident = threading.get_ident()
        self._poller.register(self._wake_r, zmq.POLLIN)
        try:
            self._open_trunk()
            while not self._stop:
                events = dict(self._poller.poll(200))
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                while self._outq and not self._stop:
                    self._handle_item(self._outq.popleft())
                if self._mon is not None and self._mon in events:
                    self._monitor_event()
                if self._skt is not None and self._skt in events:
                    self._receive_all()
        except Exception as e:  # a bug here must not leave the caller hanging silently
            log("connection loop stopped: %s: %s" % (type(e).__name__, e))
            if self.exception is None:
                self.exception = RuntimeError("connection loop stopped: %s" % e)
            self.ready.set()
        finally:
            self._close_trunk()

    def _open_trunk(self):
        self._close_trunk()
        skt = self._ctx.socket(zmq.DEALER)
        skt.setsockopt(zmq.LINGER, 0)
        skt.setsockopt(zmq.SNDHWM, 0)
        skt.setsockopt(zmq.RCVHWM, 0)
        # the monitor exists before connect() so the first CONNECTED is seen
        self._mon = skt.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        skt.connect(self.endpoint)
        self._skt = skt
        self._poller.register(self._skt, zmq.POLLIN)
        self._poller.register(self._mon, zmq.POLLIN)
        self._live = False
        self._awaiting_answer = False
        self._failed = False

    def _close_trunk(self):
        for s in (self._mon, self._skt):
            if s is not None:
                try:
                    self._poller.unregister(s)
                except KeyError:
                    pass
        if self._skt is not None:
            try:
                self._skt.disable_monitor()
            except zmq.ZMQError:
                pass
            self._skt.close(0)
        if self._mon is not None:
            self._mon.close(0)
        self._skt = self._mon = None

    def _handle_item(self, item):
        kind = item[0]
        if kind == 'frame':
            if self._live:
                self._emit(*item[1:])
            else:
                self._backlog.append(item[1:])
        elif kind == 'raw':
            if self._skt is not None:
                self._skt.send(item[1])
        elif kind == 'reconnect':
            if not item[1]:
                log("reconnecting with previous rid %s (session recovery)" % self.rid.hex())
            else:
                log("reconnecting as a new session")
                self.rid = b''
            self._open_trunk()

    def _emit(self, command, uuid, params, bulk):
        # sealed here, on the loop thread, so a frame held over a reconnect
        # goes out under the key of the session it is actually sent on
        self._skt.send(seal_frame(command, uuid, params, bulk, self.session_key))

    def _monitor_event(self):
        while self._mon is not None:
            try:
                event = recv_monitor_message(self._mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._socket_event(event)

    def _socket_event(self, event):
        if event['event'] == zmq.EVENT_CONNECTED:
            # As 1.x: every (re)connection sends the handshake, carrying the
            # rid we were given last time; then waits for the answer.
            self._live = False
            self.ready.clear()
            self._skt.send(auth_frame(self.pk, self.rid))
            self._awaiting_answer = True
            self._failed = False
        elif event['event'] == zmq.EVENT_DISCONNECTED:
            log("disconnected from %s, waiting to reconnect" % self.endpoint)
            # hold new frames until the next handshake is answered, so none can
            # reach the broker ahead of the handshake and be taken for it
            self._live = False
            self.ready.clear()

    def _receive_all(self):
        while self._skt is not None:
            try:
                data = self._skt.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self._awaiting_answer:
                self._handshake_answer(data)
            elif self._failed:
                # no session on this socket: there is no key to read it with
                log("frame after a failed handshake dropped (%d bytes)" % len(data))
            else:
                self._dispatch(data)

    def _handshake_answer(self, data):
        # 1.x takes whatever frame arrives first as the answer: anything but
        # a 3-element array means authentication failed (spec 3.5)
        self._awaiting_answer = False
        try:
            parts = cbor.loads(data)
        except Exception:
            parts = None
        if not isinstance(parts, list) or len(parts) != 3 or \
                not all(isinstance(p, bytes) for p in parts):
            self._handshake_failed(ValueError("Authentication failed."))
            return
        nonce, box, rid = parts
        if box == b'':
            session_key = None  # a node: the link stays plaintext
        else:
            try:
                session_key = libnacl.crypto_box_open(box, nonce, self.server_pk, self.sk)
            except Exception:
                self._handshake_failed(ValueError("Handshake failed."))
                return
            if len(session_key) != KEY_BYTES:
                self._handshake_failed(ValueError("Handshake failed."))
                return
        self.session_key = session_key
        self.is_node = session_key is None
        self.rid = rid
        self.handshakes += 1
        self.exception = None
        self._failed = False
        self._live = True
        log("handshake answered as %s, rid %s" % ('node' if self.is_node else 'user', rid.hex()))
        backlog, self._backlog = self._backlog, []
        for frame in backlog:
            self._emit(*frame)
        for callback in list(self.connect_callbacks):
            callback(rid)
        self.ready.set()

    def _handshake_failed(self, exception):
        log("handshake: %s" % exception)
        self.exception = exception
        self._failed = True
        self.ready.set()

    def _dispatch(self, data):
        try:
            nonce, command, uuid, params, bulk = parse_frame(data)
            if self.session_key is not None:
                params, bulk = open_fields(nonce, params, bulk, self.session_key)
        except FrameError as e:
            log("dropped a frame: %s" % e)
            return
        msg = Message(self, nonce, command, uuid, params, bulk)

        # 1.x order: a hooked reply first, then the exception check, then commands
        callback = self._reply_callbacks.get(uuid) if uuid != b'' else None
        if callback is not None:
            try:
                callback(msg)
            except Exception as e:
                log("reply callback for %s failed: %s: %s" % (uuid, type(e).__name__, e))
            return
        if isinstance(params, dict) and 'exception' in params:
            # 1.x would raise this into the loop (and a reflecting node would
            # bounce it back); logged only, so two peers cannot ping-pong it
            log("exception message received (uuid=%s): %s" % (uuid, params['exception']))
            return
        spec = self.commands.get(command)
        if spec is None:
            log("no handler for command %s (uuid=%s), ignored" % (command, uuid))
            return
        required, needs_reply, handler = spec
        try:
            for necessary in required:
                if not isinstance(params, dict) or necessary not in params:
                    raise ValueError("Necessary parameter was not passed: " + necessary)
            if needs_reply and not msg.replyable():
                raise ValueError("This command needs to be replyable but the message was not: " + str(msg))
            handler(msg)
        except ValueError as e:
            if self.reflect_value_errors and msg.replyable():
                msg.reply({'exception': str(e)})
            else:
                log("%s raised ValueError, not returned: %s" % (command, e))
        except Exception as e:
            log("handler for %s failed: %s: %s" % (command, type(e).__name__, e))
