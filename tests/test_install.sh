#!/bin/sh
# test_install.sh BUILD_DIR CC [CFLAGS] - install BUILD_DIR into a temporary
# prefix, then build tests/install/app.c against it as a user would, with
# pkg-config and with CMake's find_package, and run both; the installed
# tools answer --version and their man pages render; README's quickstart
# runs from the installed programs alone (on free loopback ports).
# CFLAGS are the build's sanitizer flags (an ASan library needs them in the
# program too).
set -u
BUILD=$1
CC=$2
CFLAGS=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/testutil.sh" # wait_for
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mdg-install.XXXXXX") || exit 1
BROKER_PID=
NODE_PID=
cleanup() {
    for pid in $NODE_PID $BROKER_PID; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
die() {
    echo "test_install: FAILED: $*" >&2
    exit 1
}

PREFIX=$TMP/prefix
cmake --install "$BUILD" --prefix "$PREFIX" >"$TMP/install.log" 2>&1 || {
    cat "$TMP/install.log" >&2
    die "cmake --install"
}
LIBDIR=$(dirname "$(find "$PREFIX" -name 'libmessidge.so' | head -1)")
[ -d "$LIBDIR" ] || die "no libmessidge.so under $PREFIX"
VERSION=$(sed -n 's/^Version: //p' "$LIBDIR/pkgconfig/libmessidge.pc")
[ -n "$VERSION" ] || die "no Version in libmessidge.pc"

# --version on each tool, and the man pages.
for tool in messidge-broker messidge-admin messidge; do
    out=$("$PREFIX/bin/$tool" --version) || die "$tool --version failed"
    [ "$out" = "$tool $VERSION" ] || die "$tool --version said \"$out\", not \"$tool $VERSION\""
    page=$PREFIX/share/man/man1/$tool.1
    [ -f "$page" ] || die "no man page $page"
    if command -v groff >/dev/null 2>&1; then
        warn=$(groff -man -Tutf8 -ww -z "$page" 2>&1)
        [ -z "$warn" ] || die "groff warns about $page: $warn"
    fi
done
out=$("$PREFIX/bin/divide_node" --version) || die "divide_node is not installed"
[ "$out" = "divide_node $VERSION" ] || die "divide_node --version said \"$out\""
unit=$PREFIX/share/doc/messidge/examples/messidge-broker.service
# (it names the broker under the prefix configured, which --prefix does not change)
grep -q "^ExecStart=/.*/messidge-broker " "$unit" || die "no example unit naming the broker: $unit"
echo "test_install: tools --version $VERSION, man pages present"

# pkg-config: the public flags name libcbor only (the header's one
# dependency), none of libzmq's (krb5, pgm, libxml2); static linking still
# gets every library; a program links and runs.
export PKG_CONFIG_PATH=$LIBDIR/pkgconfig
[ "$(pkg-config --print-requires libmessidge)" = libcbor ] || die "Requires is not just libcbor"
cflags=$(pkg-config --cflags libmessidge) || die "pkg-config --cflags libmessidge"
case $cflags in *krb5* | *pgm* | *libxml2*) die "libzmq's flags in --cflags: $cflags" ;; esac
static=$(pkg-config --static --libs libmessidge) || die "pkg-config --static --libs"
for lib in -lzmq -lsodium -lnats -lsqlite3 -lpq -lmicrohttpd -lcurl; do
    case " $static " in *" $lib "*) ;; *) die "$lib not in --static --libs: $static" ;; esac
done
# shellcheck disable=SC2046,SC2086
$CC $CFLAGS -o "$TMP/app-pc" "$HERE/install/app.c" $(pkg-config --cflags --libs libmessidge) \
    -Wl,-rpath,"$LIBDIR" || die "building with pkg-config"
"$TMP/app-pc" || die "the pkg-config program failed"
echo "test_install: pkg-config build runs"

# CMake: find_package(messidge) -> messidge::messidge.
cmake -S "$HERE/install" -B "$TMP/app-cmake" -DCMAKE_PREFIX_PATH="$PREFIX" \
    -DCMAKE_C_COMPILER="$CC" -DCMAKE_C_FLAGS="$CFLAGS" -DCMAKE_BUILD_TYPE=Debug \
    >"$TMP/cmake.log" 2>&1 || {
    cat "$TMP/cmake.log" >&2
    die "configuring with find_package(messidge)"
}
cmake --build "$TMP/app-cmake" >"$TMP/build.log" 2>&1 || {
    cat "$TMP/build.log" >&2
    die "building with find_package(messidge)"
}
"$TMP/app-cmake/app" || die "the CMake program failed"
echo "test_install: CMake build runs"
# The config-version file: a version the package does not satisfy is refused.
if cmake -S "$HERE/install" -B "$TMP/app-v99" -DCMAKE_PREFIX_PATH="$PREFIX" -DMDG_WANT=99 \
    -DCMAKE_C_COMPILER="$CC" >"$TMP/v99.log" 2>&1; then
    die "find_package(messidge 99) succeeded"
fi
# README's quickstart with the installed programs only (PATH, no build
# tree), on free loopback ports instead of 2020/2021.
PATH=$PREFIX/bin:/usr/bin:/bin
MESSIDGE_PREFIX=$TMP/keys
export PATH MESSIDGE_PREFIX
mkdir "$TMP/qs" && cd "$TMP/qs" || die "cd"
messidge-broker --state ./messidge-state --create --port 0 --bind 127.0.0.1 >broker.out 2>broker.err &
BROKER_PID=$!
wait_for broker.out "broker public key" $BROKER_PID || { cat broker.err >&2; die "the broker did not start"; }
PORT=$(sed -n 's/.*listening on port \([0-9]*\).*/\1/p' broker.out)
ACCOUNT_PORT=$(sed -n 's/.*accounts on port \([0-9]*\).*/\1/p' broker.out)
TOKEN=$(messidge-admin --state ./messidge-state invite alice@example.com) || die "invite"
messidge confirm localhost "$TOKEN" --port "$ACCOUNT_PORT" >/dev/null || die "confirm"
messidge-admin --state ./messidge-state add-node divide --port "$PORT" >add-node.out || die "add-node"
START=$(grep '^MESSIDGE_NODE_PK=' add-node.out)
case $START in *"divide_node --location localhost --port $PORT") ;; *) die "add-node printed: $START" ;; esac
# the printed command, as printed (env takes its VAR=value words)
# shellcheck disable=SC2086
env $START >node.out 2>&1 &
NODE_PID=$!
wait_for node.out "node ready" $NODE_PID || { cat node.out >&2; die "the node did not start"; }
out=$(messidge call --port "$PORT" ping) || die "messidge call ping"
case $out in *'"pong": true'*) ;; *) die "ping said $out" ;; esac
out=$(messidge nodes --port "$PORT") || die "messidge nodes"
case $out in divide*) ;; *) die "nodes said $out" ;; esac
out=$(messidge call --port "$PORT" --node divide divide dividend=10.0 devisor=5.0) || die "messidge call divide"
[ "$out" = '{"quotient": 2.0}' ] || die "divide said $out"
echo "test_install: the quickstart runs from the installed programs"
echo "test_install: PASS"
