#!/bin/sh
# Self-test of the 1.x peers against each other (no C involved):
# peer.py broker + two peer.py nodes + peer.py user, then a few protocol
# corner cases through messidge1.py (unknown key, session recovery,
# forwarding errors). Exits 0 when everything passed.
set -u
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1  # keep __pycache__ out of the source tree
HERE=$(cd "$(dirname "$0")" && pwd)
PEER="$HERE/peer.py"
DIR=$(mktemp -d /tmp/messidge1-selftest.XXXXXX)
PIDS=""
STATUS=1

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    # KEEP=1 keeps the logs of a passing run too
    if [ "$STATUS" -eq 0 ] && [ -z "${KEEP:-}" ]; then rm -rf "$DIR"
    else echo "selftest: logs kept in $DIR" >&2; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fail() { echo "selftest: FAIL: $*" >&2; exit 1; }

# wait_for FILE TEXT SECONDS: until a line starting with TEXT is in FILE
wait_for() {
    i=0
    while [ "$i" -lt $(($3 * 10)) ]; do
        grep -q "^$2" "$1" 2>/dev/null && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

LOC=127.0.0.1
$PY "$PEER" keygen --prefix "$DIR" --name "$LOC" >/dev/null || fail "keygen user"
$PY "$PEER" keygen --prefix "$DIR" --name node1 >/dev/null || fail "keygen node1"
$PY "$PEER" keygen --prefix "$DIR" --name node2 >/dev/null || fail "keygen node2"

$PY "$PEER" broker --prefix "$DIR" --name broker --port 0 --write-keys \
    --user-pub "$DIR/$LOC.pub" --node-pub "$DIR/node1.pub" "$DIR/node2.pub" \
    >"$DIR/broker.out" 2>"$DIR/broker.err" &
BROKER=$!
PIDS="$PIDS $BROKER"
wait_for "$DIR/broker.out" READY 10 || fail "broker did not start"
PORT=$(sed -n 's/^READY //p' "$DIR/broker.out")
[ "$(wc -c <"$DIR/broker.pub")" -eq 44 ] || fail "broker.pub is not 44 bytes"
cp "$DIR/broker.pub" "$DIR/$LOC.spub"

for n in node1 node2; do
    $PY "$PEER" node --prefix "$DIR" --name $n --server-pk-file "$DIR/broker.pub" \
        --location $LOC --port "$PORT" >"$DIR/$n.out" 2>"$DIR/$n.err" &
    PIDS="$PIDS $!"
done
for n in node1 node2; do
    wait_for "$DIR/$n.out" "node ready" 10 || fail "$n not ready"
done

$PY "$PEER" user --prefix "$DIR" --location $LOC --port "$PORT" --expect-nodes 2 \
    --stream 5 --timeout 10 >"$DIR/user.out" 2>"$DIR/user.err"
RC=$?
cat "$DIR/user.out"
[ $RC -eq 0 ] || fail "user exited $RC"
[ "$(grep -c '^10.0/5.0=2.0$' "$DIR/user.out")" -eq 2 ] || fail "not two quotients"
[ "$(grep -c '^Expected! ValueError raised because: Devisor cannot be zero$' "$DIR/user.out")" -eq 2 ] \
    || fail "not two divide-by-zero errors"

# protocol corner cases, driven through the library
HERE="$HERE" $PY - "$DIR" "$LOC" "$PORT" 2>"$DIR/corner.err" <<'EOF' || fail "corner cases"
import os, sys, time, threading
sys.path.insert(0, os.environ['HERE'])
import cbor, libnacl
import messidge1 as m1

d, loc, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
spk = m1.read_key(os.path.join(d, loc + '.spub'))
keys = m1.read_keypair(d, loc)

def check(cond, what):
    if not cond:
        print("corner FAIL: " + what); sys.exit(1)
    print("corner ok: " + what, flush=True)

# an unknown key is refused with a 5-element frame -> "Authentication failed."
stranger = m1.Connection(loc, port, keys=m1.new_keypair(), server_pk=spk)
try:
    stranger.wait_until_ready(5); check(False, "unknown key refused")
except ValueError as e:
    check(str(e) == "Authentication failed.", "unknown key refused (%s)" % e)
stranger.close()

# a user session, then recovery on a new socket with the old rid
offers = []
c = m1.Connection(loc, port, keys=keys, server_pk=spk,
                  commands={b'resource_offer': (['nodes'], False, lambda m: offers.append(m.params))})
c.wait_until_ready(5)
time.sleep(0.3)
check(len(offers) == 1 and len(offers[0]['nodes']) == 2, "resource_offer on a new session")
old_rid, old_key = c.rid, c.session_key
c.send_cmd(b'write_note', {'note': 'before recovery'})
c.reconnect()
c.wait_until_ready(5)
time.sleep(0.3)
check(c.rid != old_rid and c.session_key != old_key, "recovery: new rid and new session key")
check(len(offers) == 1, "recovery: no resource_offer")
notes = c.send_blocking_cmd(b'fetch_notes').params['notes']
check('before recovery' in notes, "recovery: same user's notes")

# broker-side refusals, as 1.x words them
for cmd, params, text in [
        (b'divide', {'dividend': 1.0, 'devisor': 1.0}, "No node address or invalid: b'divide'"),
        (b'divide', {'node': b'x' * 32, 'dividend': 1.0, 'devisor': 1.0}, "No node address or invalid: b'divide'"),
        (b'write_note', ['a', 'list'], "Message parameters must be a dictionary."),
        (b'write_note', {}, "Necessary parameter was not passed: note")]:
    try:
        c.send_blocking_cmd(cmd, params, timeout=5); check(False, text)
    except m1.BlockingTimeout as e:
        check(False, "%s (timed out)" % text)
    except ValueError as e:
        check(str(e) == text, "exception reply %r" % text)

# a node's divide error and bulk-in-command quirk, seen by hand
node_pk = offers[0]['nodes'][0]
r = c.send_blocking_cmd(b'divide', {'node': node_pk, 'dividend': 9.0, 'devisor': 3.0}, bulk=b'TOPSECRETBULK')
check(r.command == b'TOPSECRETBULK' and r.bulk == b'TOPSECRETBULK' and r.params == {'quotient': 3.0},
      "node reply carries its bulk in the command field")
try:
    c.send_blocking_cmd(b'divide', {'node': node_pk, 'dividend': 9, 'devisor': 3}, timeout=5)
    check(False, "ints refused")
except ValueError as e:
    check(str(e) == "Divide only takes two floats.", "ints refused by the node")
c.close()

# a raw user frame, checked byte by byte at the protocol level
import zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0)
s.connect("tcp://%s:%d" % (loc, port))
s.send(m1.auth_frame(keys[0]))
assert s.poll(5000)
nonce, box, rid = cbor.loads(s.recv())
check(len(nonce) == 24 and len(box) == 48 and len(rid) == 5, "user handshake answer: 24-byte nonce, 48-byte box, 5-byte rid")
key = libnacl.crypto_box_open(box, nonce, spk, keys[1])
assert s.poll(5000)
f = cbor.loads(s.recv())
check(f[1] == b'resource_offer' and f[2] == b'' and f[4] == b'' and isinstance(f[3], bytes),
      "resource_offer frame: boxed params, empty bulk")
check(cbor.loads(libnacl.crypto_secretbox_open(f[3], f[0], key))['nodes'] == offers[0]['nodes'], "offer opens")
s.send(m1.seal_frame(b'fetch_notes', b'u1', {}, b'', key))
assert s.poll(5000)
f = cbor.loads(s.recv())
check(f[1] == b'' and f[2] == b'u1' and len(f[0]) == 24 and f[4] == b'', "broker reply frame shape")
s.close(); ctx.term()
print("corner cases ok")
EOF

STATUS=0
echo "selftest: ok"
