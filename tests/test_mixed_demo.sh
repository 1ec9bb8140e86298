#!/bin/sh
# test_mixed_demo.sh BUILD_DIR PYTHON PEER_PY - the mixed Messidge 1.x demo
# from the shipped programs alone (BUILD_DIR/demo and BUILD_DIR/tools), with
# the Python 1.x peers of tests/legacy/peer.py:
#
#   A. the C notes_broker with --legacy-port: a Python 1.x user (its account
#      made by 1.x's create_account against our account server) divides on
#      the 1.x port on two nodes, the C divide_node and a Python 1.x node,
#      both registered with messidge-admin add-node; the C notes_client runs
#      the guide's demo natively with them.
#   B. a Python 1.x broker: divide_node --legacy serves it, notes_client
#      --legacy runs the guide's demo through it, and messidge call --legacy
#      calls its notes and the C node.
set -u
BUILD=$1
PY=$2
PEER=$3
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/testutil.sh" # wait_for
export PYTHONDONTWRITEBYTECODE=1
PATH=$BUILD/demo:$BUILD/tools:/usr/bin:/bin
export PATH
unset MESSIDGE_PREFIX http_proxy HTTP_PROXY all_proxy ALL_PROXY
DIR=$(mktemp -d "${TMPDIR:-/tmp}/mdg-mixed.XXXXXX") || exit 1
PIDS=
STATUS=1
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    if [ "$STATUS" -eq 0 ]; then rm -rf "$DIR"; else echo "test_mixed_demo: logs kept in $DIR" >&2; fi
}
trap cleanup EXIT
die() {
    echo "test_mixed_demo: FAILED: $*" >&2
    exit 1
}
# field NAME FILE: the value of NAME=... in add-node's output
field() { tr ' ' '\n' <"$2" | sed -n "s/^$1=//p"; }
LOC=127.0.0.1
cd "$DIR" || exit 1

# ---------------------------------------------------- A. the C broker
messidge-admin --state state --create invite py@example.com >py.token || die "invite"
messidge-admin --state state invite c@example.com >c.token || die "invite"
notes_broker --state state --prefix bkeys --port 0 --account-port 0 --legacy-port 0 >nb.out 2>nb.err &
NB=$!
PIDS="$PIDS $NB"
wait_for nb.out "broker public key" $NB || { cat nb.err >&2; die "notes_broker did not start"; }
PORT=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' nb.out)
ACCOUNT_PORT=$(sed -n 's/.*accounts on port \([0-9]*\).*/\1/p' nb.out)
LEGACY_PORT=$(sed -n 's/.*Messidge 1.x on port \([0-9]*\).*/\1/p' nb.out)
[ -n "$LEGACY_PORT" ] || die "notes_broker did not say its 1.x port: $(cat nb.out)"

"$PY" "$PEER" create-account --prefix py --location $LOC --port "$ACCOUNT_PORT" --token "$(cat py.token)" \
    >/dev/null || die "1.x create_account"
messidge confirm $LOC "$(cat c.token)" --port "$ACCOUNT_PORT" --prefix c >/dev/null || die "messidge confirm"

messidge-admin --state state --prefix bkeys add-node divide --location $LOC --port "$PORT" >cnode.out ||
    die "add-node divide"
env $(grep '^MESSIDGE_NODE_PK=' cnode.out) >cnode.log 2>&1 &
PIDS="$PIDS $!"
wait_for cnode.log "node ready" $! || { cat cnode.log >&2; die "divide_node did not start"; }

# the Python node's keys from add-node, as 1.x key files (44 bytes, no newline)
messidge-admin --state state --prefix bkeys add-node pydivide >pynode.out || die "add-node pydivide"
printf '%s' "$(field MESSIDGE_NODE_PK pynode.out)" >py/pynode.pub
printf '%s' "$(field MESSIDGE_NODE_SK pynode.out)" >py/pynode
"$PY" "$PEER" node --prefix py --name pynode --server-pk-file bkeys/localhost_broker.pub --location $LOC \
    --port "$LEGACY_PORT" >pynode.log 2>&1 &
PIDS="$PIDS $!"
wait_for pynode.log "node ready" $! || { cat pynode.log >&2; die "the 1.x node did not start"; }

# (peer.py's `divide`: its `user` also sends bulk, which the guide's
# divide_node does not echo)
"$PY" "$PEER" divide --prefix py --port "$LEGACY_PORT" --timeout 20 >pyuser.out 2>pyuser.err ||
    { cat pyuser.out pyuser.err >&2; die "the 1.x user"; }
[ "$(grep -c '^10.0/5.0=2.0$' pyuser.out)" -eq 2 ] || die "the 1.x user did not divide on both nodes: $(cat pyuser.out)"
MESSIDGE_PREFIX=$DIR/c notes_client --port "$PORT" --require-node >cuser.out 2>&1 ||
    { cat cuser.out >&2; die "notes_client"; }
grep -q '^10.0/5.0=2.0$' cuser.out || die "notes_client did not divide: $(cat cuser.out)"
echo "test_mixed_demo: A. notes_broker --legacy-port: the 1.x user and node, and the C ones, work together"
for p in $PIDS; do kill "$p" 2>/dev/null; done
for p in $PIDS; do wait "$p" 2>/dev/null; done
PIDS=

# ---------------------------------------------------- B. the 1.x broker
"$PY" "$PEER" keygen --prefix b --name $LOC >/dev/null || die "keygen"
"$PY" "$PEER" keygen --prefix b --name cnode >/dev/null || die "keygen"
"$PY" "$PEER" broker --prefix b --name broker --port 0 --write-keys --user-pub b/$LOC.pub \
    --node-pub b/cnode.pub >pb.out 2>pb.err &
PB=$!
PIDS="$PIDS $PB"
wait_for pb.out "^READY" $PB || { cat pb.err >&2; die "the 1.x broker did not start"; }
PORT=$(sed -n 's/^READY //p' pb.out)
cp b/broker.pub b/$LOC.spub
printf '%s' $LOC >b/default_location
MESSIDGE_NODE_PK=$(cat b/cnode.pub) MESSIDGE_NODE_SK=$(cat b/cnode) MESSIDGE_BROKER_PK=$(cat b/broker.pub) \
    divide_node --legacy --location $LOC --port "$PORT" >lnode.log 2>&1 &
PIDS="$PIDS $!"
wait_for lnode.log "node ready" $! || { cat lnode.log >&2; die "divide_node --legacy did not start"; }
MESSIDGE_PREFIX=$DIR/b notes_client --legacy --port "$PORT" --require-node >luser.out 2>&1 ||
    { cat luser.out >&2; die "notes_client --legacy"; }
grep -q '^10.0/5.0=2.0$' luser.out || die "notes_client --legacy did not divide: $(cat luser.out)"
grep -q '^Expected! ValueError raised because: raise_exception was called$' luser.out ||
    die "notes_client --legacy: no exception from the 1.x broker"
out=$(MESSIDGE_PREFIX=$DIR/b messidge call --legacy --port "$PORT" --node "$(cat b/cnode.pub)" divide \
    dividend=10.0 devisor=4.0) || die "messidge call --legacy divide: $out"
[ "$out" = '{"quotient": 2.5}' ] || die "messidge call --legacy divide said $out"
out=$(MESSIDGE_PREFIX=$DIR/b messidge call --legacy --port "$PORT" fetch_notes) || die "messidge call --legacy fetch_notes"
case $out in '{"notes": ['*) ;; *) die "fetch_notes said $out" ;; esac
echo "test_mixed_demo: B. divide_node, notes_client and messidge call --legacy against the 1.x broker"
STATUS=0
echo "test_mixed_demo: PASS"
