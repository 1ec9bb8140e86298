#!/bin/sh
# run-demo.sh BUILD_DIR - run the notes demo on loopback.
#
# Makes keys in a throw-away key directory, starts the notes broker on a
# free port, starts the divide node, runs the notes client against them,
# stops the node and the broker, and exits with the client's status (or the
# node's or broker's, if only they failed). Nothing outside the temporary
# directory is touched: ~/.messidge is not used.
set -u

BUILD=${1:-build}
BIN=$BUILD/demo
for prog in demo_setup notes_broker notes_client divide_node; do
    if [ ! -x "$BIN/$prog" ]; then
        echo "run-demo: $BIN/$prog not found: build first (make demo)" >&2
        exit 2
    fi
done

step() { printf '\n==> %s\n' "$*"; }

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

# All programs that use key files use this key directory (also --prefix).
PREFIX=$TMP/keys
MESSIDGE_PREFIX=$PREFIX
export MESSIDGE_PREFIX

step "Setting up keys in $PREFIX (demo_setup stands in for messidge-admin invite / messidge confirm)"
# demo_setup prints USER_PK=, NODE_PK=, NODE_SK= and BROKER_PK= lines. The
# node's secret key goes from this pipe into the node's environment only:
# never into an argument list (visible in ps) nor a file.
SETUP=$("$BIN/demo_setup" --prefix "$PREFIX") || exit 1
field() { printf '%s\n' "$SETUP" | sed -n "s/^$1=//p"; }
USER_PK=$(field USER_PK)
NODE_PK=$(field NODE_PK)
NODE_SK=$(field NODE_SK)
BROKER_PK=$(field BROKER_PK)
if [ -z "$USER_PK" ] || [ -z "$NODE_PK" ] || [ -z "$NODE_SK" ] || [ -z "$BROKER_PK" ]; then
    echo "run-demo: demo_setup did not print the keys" >&2
    exit 1
fi
echo "user public key:   $USER_PK"
echo "node public key:   $NODE_PK (its secret key is passed in the environment)"
echo "broker public key: $BROKER_PK"
echo "files: $(cd "$PREFIX" && echo *)"

step "Starting the broker (notes_broker) on 127.0.0.1, free port"
PORT_FILE=$TMP/port
"$BIN/notes_broker" --prefix "$PREFIX" --bind 127.0.0.1 --port 0 --port-file "$PORT_FILE" \
    --allow-pk "$USER_PK" --allow-node-pk "$NODE_PK" --verbose &
BROKER_PID=$!
wait_for "$PORT_FILE" "$BROKER_PID" broker || { BROKER_PID=; exit 1; }
PORT=$(cat "$PORT_FILE")
echo "broker listening on port $PORT"

step "Starting the divide node (divide_node)"
# The node says "node ready" on stdout once the broker has admitted it;
# that line, in a file, is what we wait for.
NODE_OUT=$TMP/node.out
MESSIDGE_NODE_PK=$NODE_PK MESSIDGE_NODE_SK=$NODE_SK MESSIDGE_BROKER_PK=$BROKER_PK \
    "$BIN/divide_node" --location 127.0.0.1 --port "$PORT" >"$NODE_OUT" &
NODE_PID=$!
NODE_SK=
wait_for "$NODE_OUT" "$NODE_PID" node || { NODE_PID=; exit 1; }
cat "$NODE_OUT"

step "Running the client (notes_client)"
"$BIN/notes_client" --prefix "$PREFIX" --port "$PORT" --require-node
CLIENT_STATUS=$?

step "Stopping the node"
kill -TERM "$NODE_PID"
wait "$NODE_PID"
NODE_STATUS=$?
NODE_PID=

step "Stopping the broker"
kill -TERM "$BROKER_PID"
wait "$BROKER_PID"
BROKER_STATUS=$?
BROKER_PID=

if [ "$CLIENT_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the client exited with status $CLIENT_STATUS" >&2
    exit "$CLIENT_STATUS"
fi
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
