#!/bin/sh
# run-demo.sh BUILD_DIR - run the notes demo on loopback.
#
# Makes keys in a throw-away key directory, starts the notes broker on a
# free port, runs the notes client against it, stops the broker, and exits
# with the client's status (or the broker's, if only the broker failed).
# Nothing outside the temporary directory is touched: ~/.messidge is not used.
set -u

BUILD=${1:-build}
BIN=$BUILD/demo
for prog in demo_setup notes_broker notes_client; do
    if [ ! -x "$BIN/$prog" ]; then
        echo "run-demo: $BIN/$prog not found: build first (make demo)" >&2
        exit 2
    fi
done

step() { printf '\n==> %s\n' "$*"; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/messidge-demo.XXXXXX") || exit 2
BROKER_PID=
cleanup() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# All three programs use this key directory (also given as --prefix).
PREFIX=$TMP/keys
MESSIDGE_PREFIX=$PREFIX
export MESSIDGE_PREFIX

step "Setting up keys in $PREFIX (demo_setup stands in for messidge-admin invite / messidge confirm)"
USER_PK=$("$BIN/demo_setup" --prefix "$PREFIX") || exit 1
echo "user public key: $USER_PK"
echo "files: $(cd "$PREFIX" && echo *)"

step "Starting the broker (notes_broker) on 127.0.0.1, free port"
PORT_FILE=$TMP/port
"$BIN/notes_broker" --prefix "$PREFIX" --bind 127.0.0.1 --port 0 --port-file "$PORT_FILE" \
    --allow-pk "$USER_PK" --verbose &
BROKER_PID=$!

# Wait (at most 10 s) for the broker to say which port it got.
i=0
while [ ! -s "$PORT_FILE" ]; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        wait "$BROKER_PID"
        echo "run-demo: the broker exited before listening (status $?)" >&2
        BROKER_PID=
        exit 1
    fi
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        echo "run-demo: the broker did not start listening within 10 s" >&2
        exit 1
    fi
    sleep 0.1
done
PORT=$(cat "$PORT_FILE")
echo "broker listening on port $PORT"

step "Running the client (notes_client)"
"$BIN/notes_client" --prefix "$PREFIX" --port "$PORT"
CLIENT_STATUS=$?

step "Stopping the broker"
kill -TERM "$BROKER_PID"
wait "$BROKER_PID"
BROKER_STATUS=$?
BROKER_PID=

if [ "$CLIENT_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the client exited with status $CLIENT_STATUS" >&2
    exit "$CLIENT_STATUS"
fi
if [ "$BROKER_STATUS" -ne 0 ]; then
    echo "run-demo: FAILED: the broker exited with status $BROKER_STATUS" >&2
    exit "$BROKER_STATUS"
fi
step "Demo finished: OK"
exit 0
