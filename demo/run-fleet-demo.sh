#!/bin/bash
# run-fleet-demo.sh BUILD_DIR - the guide's demo across a fleet of two
# brokers, for real, on loopback (docs/fleet.md).
#
# In a throw-away directory:
#
#   1. a NATS cluster of three nats-server processes, each routed to the
#      two others (free loopback ports)
#   2. a PostgreSQL server (initdb, postgres; as the user "nobody" when run
#      as root, since PostgreSQL refuses root) and the shared identity store
#   3. two notes brokers, each with its own key pair, on the one store, in
#      one fleet through the cluster (each lists the other's public key)
#   4. the admin invites a user; the user confirms at broker 2
#   5. the admin registers the divide node; it starts at broker 1
#   6. the notes client runs the guide's demo at broker 2, its node calls
#      crossing to broker 1; then one call from the command line
#   7. everything started here is stopped, by PID
#
# Readiness is polled for, with deadlines. Whatever happens (a failure,
# Ctrl-C), a trap stops every process this script started, by its PID,
# and removes the directory. It exits with the client's status (or the
# first failure's).
set -u

BUILD=${1:-build}
if ! BUILD=$(cd "$BUILD" 2>/dev/null && pwd); then
    echo "run-fleet-demo: build directory '${1:-build}' not found: build first (make fleet-demo)" >&2
    exit 2
fi
for prog in demo/notes_broker demo/notes_client demo/divide_node tools/messidge-admin tools/messidge; do
    if [ ! -x "$BUILD/$prog" ]; then
        echo "run-fleet-demo: $BUILD/$prog not found: build first (make fleet-demo)" >&2
        exit 2
    fi
done
NATS_SERVER=${MDG_NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
PG_BIN=${MDG_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$NATS_SERVER" ] || { echo "run-fleet-demo: no nats-server (apt-get install nats-server)" >&2; exit 2; }
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/postgres" ] ||
    { echo "run-fleet-demo: no PostgreSQL server (apt-get install postgresql)" >&2; exit 2; }
PATH=$BUILD/tools:$BUILD/demo:$PATH
export PATH

step() { printf '\n==> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
die() {
    echo "run-fleet-demo: FAILED: $*" >&2
    exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/messidge-fleet-demo.XXXXXX") || exit 2
PIDS=() # everything started here, stopped in reverse order
PG_PID=
cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[i]}" 2>/dev/null
        wait "${PIDS[i]}" 2>/dev/null
    done
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null # fast shutdown
        wait "$PG_PID" 2>/dev/null
    fi
    cd /
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Poll (every 0.1 s, at most SECONDS s) until COMMAND succeeds, while
# process PID lives. until_ready SECONDS PID WHAT COMMAND...
until_ready() {
    local secs=$1 pid=$2 what=$3 i=0
    shift 3
    until "$@" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run-fleet-demo: the $what exited before it was ready" >&2
            return 1
        fi
        i=$((i + 1))
        if [ "$i" -gt $((secs * 10)) ]; then
            echo "run-fleet-demo: the $what was not ready within $secs s" >&2
            return 1
        fi
        sleep 0.1
    done
}

# N free loopback TCP ports, bound at once so that they differ.
free_ports() {
    python3 -c 'import socket,sys
s=[socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1",0))
print(" ".join(str(x.getsockname()[1]) for x in s))' "$1"
}

# Whether the nats-server on PORT offers the client URLs of every port
# given after it (its routes to them are up): its INFO line.
nats_routed() {
    local port=$1 info other
    shift
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    IFS= read -r -t 2 info <&3
    exec 3>&-
    case $info in INFO*) ;; *) return 1 ;; esac
    for other in "$@"; do
        case $info in *"127.0.0.1:$other\""*) ;; *) return 1 ;; esac
    done
}

# Whether FILE has a line matching the grep pattern.
has_line() { grep -q "$2" "$1"; }

cd "$TMP" || exit 2
chmod 711 "$TMP" # "nobody" (PostgreSQL, when we are root) reaches pg/ only
MESSIDGE_PREFIX=$TMP/keys
export MESSIDGE_PREFIX
printf 'Working in %s (removed at the end)\n' "$TMP"
show "export MESSIDGE_PREFIX=$MESSIDGE_PREFIX"

step "1. A NATS cluster of three servers on loopback, each routed to the two others"
# Another program may take a free port before a server binds it (on a busy
# machine): then the servers are stopped and started again on new ports.
for attempt in 1 2 3; do
    read -r N1 N2 N3 C1 C2 C3 < <(free_ports 6)
    CLIENT_PORTS=("$N1" "$N2" "$N3")
    CLUSTER_PORTS=("$C1" "$C2" "$C3")
    NATS_PIDS=()
    for i in 0 1 2; do
        routes=
        for j in 0 1 2; do
            [ "$i" = "$j" ] || routes="${routes:+$routes,}nats://127.0.0.1:${CLUSTER_PORTS[j]}"
        done
        show nats-server -a 127.0.0.1 -p "${CLIENT_PORTS[i]}" --cluster_name messidge-demo \
            --cluster "nats://127.0.0.1:${CLUSTER_PORTS[i]}" --routes "$routes" '&'
        "$NATS_SERVER" -a 127.0.0.1 -p "${CLIENT_PORTS[i]}" --cluster_name messidge-demo \
            --cluster "nats://127.0.0.1:${CLUSTER_PORTS[i]}" --routes "$routes" >"nats$((i + 1)).log" 2>&1 &
        NATS_PIDS+=($!)
        PIDS+=($!)
    done
    ready=1
    for i in 0 1 2; do
        others=()
        for j in 0 1 2; do [ "$i" = "$j" ] || others+=("${CLIENT_PORTS[j]}"); done
        until_ready 20 "${NATS_PIDS[i]}" "nats-server $((i + 1))" nats_routed "${CLIENT_PORTS[i]}" "${others[@]}" ||
            { ready=0; failed=$((i + 1)); break; }
    done
    [ "$ready" = 1 ] && break
    if [ "$attempt" -lt 3 ] && grep -q "address already in use" nats*.log; then
        echo "run-fleet-demo: a port was taken meanwhile: the cluster again, on new ports" >&2
        for pid in "${NATS_PIDS[@]}"; do
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        done
        PIDS=()
        continue
    fi
    cat "nats$failed.log" >&2
    exit 1
done
NATS_URL="nats://127.0.0.1:$N1,nats://127.0.0.1:$N2,nats://127.0.0.1:$N3"
echo "cluster up: every server offers the other two ($NATS_URL)"

step "2. PostgreSQL in $TMP/pg (the shared identity store)"
mkdir pg
# PostgreSQL refuses to run as root: then its programs run as "nobody".
AS=()
if [ "$(id -u)" = 0 ]; then
    chown nobody:"$(id -gn nobody)" pg
    AS=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --)
fi
show initdb -D pg/data -U messidge --auth=trust
"${AS[@]}" "$PG_BIN/initdb" -D pg/data -U messidge --auth=trust -E UTF8 --no-sync \
    >pg/initdb.log 2>&1 || { cat pg/initdb.log >&2; die "initdb"; }
for attempt in 1 2 3; do
    read -r PGPORT < <(free_ports 1)
    show postgres -D pg/data -p "$PGPORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$TMP/pg" '&'
    "${AS[@]}" "$PG_BIN/postgres" -D pg/data -p "$PGPORT" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$TMP/pg" >pg/server.log 2>&1 &
    PG_PID=$!
    until_ready 60 "$PG_PID" "PostgreSQL server" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break
    if [ "$attempt" -lt 3 ] && ! kill -0 "$PG_PID" 2>/dev/null &&
        grep -qi "address already in use" pg/server.log; then
        wait "$PG_PID" 2>/dev/null
        PG_PID=
        echo "run-fleet-demo: the port was taken meanwhile: PostgreSQL again, on a new port" >&2
        continue
    fi
    cat pg/server.log >&2
    exit 1
done
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U messidge messidge || die "createdb"
STORE="postgresql://messidge@127.0.0.1:$PGPORT/messidge"
echo "store: $STORE"

step "3. Two brokers on the one store, in one fleet through the cluster"
# Each broker's key pair first: each lists the other's public key.
show messidge keygen localhost_broker --prefix broker1
B1_PK=$(messidge keygen localhost_broker --prefix broker1) || die "messidge keygen"
echo "$B1_PK"
show messidge keygen localhost_broker --prefix broker2
B2_PK=$(messidge keygen localhost_broker --prefix broker2) || die "messidge keygen"
echo "$B2_PK"
show messidge-admin --store "$STORE" --create list
messidge-admin --store "$STORE" --create list >/dev/null || die "messidge-admin --create"
for b in 1 2; do
    if [ "$b" = 1 ]; then other=$B2_PK; else other=$B1_PK; fi
    show notes_broker --prefix "broker$b" --store "$STORE" --port 0 --account-port 0 \
        --port-file "broker$b.port" --fleet "$NATS_URL" --fleet-name demo --fleet-member "$other" '&'
    notes_broker --prefix "broker$b" --store "$STORE" --port 0 --account-port 0 \
        --port-file "broker$b.port" --fleet "$NATS_URL" --fleet-name demo --fleet-member "$other" \
        >"broker$b.out" 2>"broker$b.log" &
    PIDS+=($!)
    until_ready 20 "$!" "broker $b" test -s "broker$b.port" || { cat "broker$b.log" >&2; exit 1; }
    cat "broker$b.out"
done
PORT1=$(cat broker1.port)
PORT2=$(cat broker2.port)
ACCOUNT_PORT2=$(sed -n 's/.*accounts on port \([0-9][0-9]*\).*/\1/p' broker2.out)
[ -n "$PORT1" ] && [ -n "$PORT2" ] && [ -n "$ACCOUNT_PORT2" ] || die "the brokers did not tell their ports"
BROKER2_PID=${PIDS[${#PIDS[@]} - 1]}
until_ready 20 "$BROKER2_PID" "fleet" has_line broker2.log "broker .* joined" ||
    { cat broker1.log broker2.log >&2; exit 1; }
echo "broker 2 heard broker 1: the fleet is one"

step "4. The admin invites a user, who confirms at broker 2"
show messidge-admin --store "$STORE" invite demo@example.com
TOKEN=$(messidge-admin --store "$STORE" invite demo@example.com) || die "messidge-admin invite"
printf '%s\n' "$TOKEN"
show messidge confirm localhost "$TOKEN" --port "$ACCOUNT_PORT2"
messidge confirm localhost "$TOKEN" --port "$ACCOUNT_PORT2" || die "messidge confirm"

step "5. The admin registers the divide node; it starts at broker 1"
show messidge-admin --store "$STORE" --prefix broker1 add-node divide --port "$PORT1"
ADD_NODE=$(messidge-admin --store "$STORE" --prefix broker1 add-node divide --port "$PORT1") ||
    die "messidge-admin add-node"
field() { printf '%s\n' "$ADD_NODE" | sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
NODE_PK=$(field MESSIDGE_NODE_PK)
NODE_SK=$(field MESSIDGE_NODE_SK)
BROKER_PK=$(field MESSIDGE_BROKER_PK)
ADD_NODE=
[ -n "$NODE_PK" ] && [ -n "$NODE_SK" ] && [ "$BROKER_PK" = "$B1_PK" ] ||
    die "messidge-admin add-node did not print the node's keys and broker 1's key"
echo "node \"divide\" registered with public key $NODE_PK"
show "MESSIDGE_NODE_PK=$NODE_PK MESSIDGE_NODE_SK=(secret)" \
    "MESSIDGE_BROKER_PK=$BROKER_PK divide_node --location localhost --port $PORT1 &"
# its secret key goes into its environment only, never an argument list
MESSIDGE_NODE_PK=$NODE_PK MESSIDGE_NODE_SK=$NODE_SK MESSIDGE_BROKER_PK=$BROKER_PK \
    divide_node --location localhost --port "$PORT1" >node.out &
PIDS+=($!)
NODE_SK=
until_ready 20 "$!" node test -s node.out || exit 1
cat node.out
# Broker 2 learns of the node through the fleet's directory: the client's
# resource offer, made when its session starts, must list it.
until_ready 20 "$BROKER2_PID" "fleet directory" \
    messidge call --port "$PORT2" --node "$NODE_PK" divide dividend=1.0 devisor=1.0 >/dev/null ||
    die "broker 2 did not learn of the node at broker 1"
echo "broker 2 routes to the node at broker 1"

step "6. Running the client at broker 2 (notes_client; its node calls cross to broker 1)"
show notes_client --port "$PORT2" --require-node
notes_client --port "$PORT2" --require-node
CLIENT_STATUS=$?

step "   ... and calling the node at broker 1 from the command line, through broker 2"
show messidge call --port "$PORT2" --node "$NODE_PK" divide dividend=10.0 devisor=5.0
messidge call --port "$PORT2" --node "$NODE_PK" divide dividend=10.0 devisor=5.0
CALL_STATUS=$?

step "7. Stopping the node, the brokers, the cluster and PostgreSQL"
STATUS=0
for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}"
    wait "${PIDS[i]}"
    rc=$?
    # nats-server ends with 1 on SIGTERM; the node and the brokers with 0
    [ "$i" -lt 3 ] || [ "$rc" -eq 0 ] || { echo "run-fleet-demo: process ${PIDS[i]} exited with status $rc" >&2; STATUS=$rc; }
done
PIDS=()
kill -INT "$PG_PID"
wait "$PG_PID"
PG_PID=

[ "$CLIENT_STATUS" -eq 0 ] || die "the client exited with status $CLIENT_STATUS"
[ "$CALL_STATUS" -eq 0 ] || die "messidge call exited with status $CALL_STATUS"
[ "$STATUS" -eq 0 ] || die "a node or broker exited with status $STATUS"
step "Fleet demo finished: OK"
exit 0
