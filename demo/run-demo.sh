#!/bin/sh
# run-demo.sh BUILD_DIR - the quickstart, for real, on loopback.
#
# In a throw-away directory, with the command-line tools of BUILD_DIR/tools
# and the demo programs of BUILD_DIR/demo:
#
#   1. the admin invites a user:  messidge-admin invite EMAIL  -> a token
#   2. the notes broker starts, with the identity store and the account
#      server (free ports: the base port, and the account port)
#   3. the user confirms:  messidge confirm localhost TOKEN  -> key files
#   4. the admin registers the divide node:  messidge-admin add-node
#   5. the divide node starts (its secret key in its environment only)
#   6. the notes client runs the guide's demo; then one call from the
#      command line:  messidge call --node PK divide ...
#   7. the node and the broker are stopped
#
# It exits with the client's status (or the node's, the broker's or a
# step's, if only they failed). Nothing outside the temporary directory is
# touched: ~/.messidge and ./messidge-state are not used.
set -u

BUILD=${1:-build}
if ! BUILD=$(cd "$BUILD" 2>/dev/null && pwd); then
    echo "run-demo: build directory '${1:-build}' not found: build first (make demo)" >&2
    exit 2
fi
for prog in demo/notes_broker demo/notes_client demo/divide_node tools/messidge-admin \
    tools/messidge; do
    if [ ! -x "$BUILD/$prog" ]; then
        echo "run-demo: $BUILD/$prog not found: build first (make demo)" >&2
        exit 2
    fi
done
# Ours first, so the commands shown are exactly the commands run (and an
# installed copy elsewhere on the PATH is not picked up).
PATH=$BUILD/tools:$BUILD/demo:$PATH
export PATH

step() { printf '\n==> %s\n' "$*"; }
# Show a command as a user would type it (the caller then runs it).
show() { printf '$ %s\n' "$*"; }
die() {
    echo "run-demo: FAILED: $*" >&2
    exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/messidge-demo.XXXXXX") || exit 2
BROKER_PID=
NODE_PID=
# Stop a process we started (by its pid) and reap it.
stop() {
    if [ -n "$1" ]; then
        kill "$1" 2>/dev/null
        wait "$1" 2>/dev/null
    fi
}
cleanup() {
    stop "$NODE_PID"
    stop "$BROKER_PID"
    cd /
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait (at most 10 s) until FILE is non-empty, while process PID lives.
# wait_for FILE PID WHAT
wait_for() {
    i=0
    while [ ! -s "$1" ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            wait "$2"
            echo "run-demo: the $3 exited before it was ready (status $?)" >&2
            return 1
        fi
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            echo "run-demo: the $3 was not ready within 10 s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# Everything happens in the temporary directory: the broker's state
# directory is ./state, and every program that uses key files (the broker's
# localhost_broker, the user's localhost, messidge-admin reading the
# broker's public key) uses the key directory $MESSIDGE_PREFIX.
cd "$TMP" || exit 2
MESSIDGE_PREFIX=$TMP/keys
export MESSIDGE_PREFIX
STATE=state
printf 'Working in %s (removed at the end)\n' "$TMP"
show "export MESSIDGE_PREFIX=$MESSIDGE_PREFIX"

step "1. The admin invites a user (messidge-admin invite prints a single-use token)"
show messidge-admin --state "$STATE" --create invite demo@example.com
TOKEN=$(messidge-admin --state "$STATE" --create invite demo@example.com) ||
    die "messidge-admin invite"
[ -n "$TOKEN" ] || die "messidge-admin invite printed no token"
printf '%s\n' "$TOKEN"

step "2. Starting the broker (notes_broker: identity store, account server), free ports"
show notes_broker --state "$STATE" --port 0 --account-port 0 --port-file broker.port --verbose '&'
notes_broker --state "$STATE" --port 0 --account-port 0 --port-file broker.port --verbose \
    >broker.out &
BROKER_PID=$!
# the port file is written once both servers listen, after the stdout lines
wait_for broker.port "$BROKER_PID" broker || { BROKER_PID=; exit 1; }
cat broker.out
PORT=$(cat broker.port)
ACCOUNT_PORT=$(sed -n 's/.*accounts on port \([0-9][0-9]*\).*/\1/p' broker.out)
if [ -z "$PORT" ] || [ -z "$ACCOUNT_PORT" ]; then
    die "the broker did not tell its ports"
fi

step "3. The user confirms the invitation (messidge confirm makes the key files)"
show messidge confirm localhost "$TOKEN" --port "$ACCOUNT_PORT"
messidge confirm localhost "$TOKEN" --port "$ACCOUNT_PORT" || die "messidge confirm"
show ls "$MESSIDGE_PREFIX"
ls "$MESSIDGE_PREFIX"

step "4. The admin registers the divide node (messidge-admin add-node)"
show messidge-admin --state "$STATE" add-node divide --port "$PORT"
# It prints the node's key pair and the broker's key, as the command that
# starts the node. The secret goes from this variable into the node's
# environment only: never into an argument list (visible in ps), a file,
# or the output below.
ADD_NODE=$(messidge-admin --state "$STATE" add-node divide --port "$PORT") || die "messidge-admin add-node"
field() { printf '%s\n' "$ADD_NODE" | sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
NODE_PK=$(field MESSIDGE_NODE_PK)
NODE_SK=$(field MESSIDGE_NODE_SK)
BROKER_PK=$(field MESSIDGE_BROKER_PK)
ADD_NODE=
if [ -z "$NODE_PK" ] || [ -z "$NODE_SK" ] || [ -z "$BROKER_PK" ] || [ "$BROKER_PK" = BROKER_PK ]
then
    die "messidge-admin add-node did not print the node's keys and the broker's key"
fi
echo "node \"divide\" registered with public key $NODE_PK"
echo "(it also printed the command that starts the node, with its secret key)"

step "5. Starting the divide node"
show "MESSIDGE_NODE_PK=$NODE_PK MESSIDGE_NODE_SK=(secret)" \
    "MESSIDGE_BROKER_PK=$BROKER_PK divide_node --location localhost --port $PORT &"
# The node says "node ready" on stdout once the broker has admitted it;
# that line, in a file, is what we wait for.
MESSIDGE_NODE_PK=$NODE_PK MESSIDGE_NODE_SK=$NODE_SK MESSIDGE_BROKER_PK=$BROKER_PK \
    divide_node --location localhost --port "$PORT" >node.out &
NODE_PID=$!
NODE_SK=
wait_for node.out "$NODE_PID" node || { NODE_PID=; exit 1; }
cat node.out

step "6. Running the client (notes_client; location and keys from \$MESSIDGE_PREFIX)"
show notes_client --port "$PORT" --require-node
notes_client --port "$PORT" --require-node
CLIENT_STATUS=$?

step "   ... and calling the node from the command line (messidge call)"
show messidge call --port "$PORT" --node "$NODE_PK" divide dividend=10.0 devisor=5.0
messidge call --port "$PORT" --node "$NODE_PK" divide dividend=10.0 devisor=5.0
CALL_STATUS=$?

step "7. Stopping the node and the broker"
kill -TERM "$NODE_PID"
wait "$NODE_PID"
NODE_STATUS=$?
NODE_PID=
kill -TERM "$BROKER_PID"
wait "$BROKER_PID"
BROKER_STATUS=$?
BROKER_PID=

if [ "$CLIENT_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the client exited with status $CLIENT_STATUS" >&2
    exit "$CLIENT_STATUS"
fi
[ "$CALL_STATUS" -eq 0 ] || die "messidge call exited with status $CALL_STATUS"
if [ "$NODE_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the node exited with status $NODE_STATUS" >&2
    exit "$NODE_STATUS"
fi
if [ "$BROKER_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the broker exited with status $BROKER_STATUS" >&2
    exit "$BROKER_STATUS"
fi
step "Demo finished: OK"
exit 0
