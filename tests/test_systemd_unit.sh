#!/bin/sh
# test_systemd_unit.sh UNIT_IN BROKER - the example unit passes
# `systemd-analyze verify`, with ExecStart pointed at the built broker (the
# installed path need not exist here). Skipped (exit 77) without
# systemd-analyze.
set -u
UNIT_IN=$1
BROKER=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "test_systemd_unit: SKIPPED: systemd-analyze is not installed (apt-get install systemd)"
    exit 77
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mdg-unit.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT
sed "s|@MDG_BROKER_PATH@|$BROKER|" "$UNIT_IN" >"$TMP/messidge-broker.service"
# --man=no: its Documentation= man page is installed only with the broker
out=$(systemd-analyze verify --man=no "$TMP/messidge-broker.service" 2>&1)
status=$?
# verify also reads units the example refers to (network-online.target);
# only lines about this unit count
mine=$(printf '%s\n' "$out" | grep 'messidge-broker.service' || true)
if [ $status -ne 0 ] || [ -n "$mine" ]; then
    printf '%s\n' "$out" >&2
    echo "test_systemd_unit: FAILED" >&2
    exit 1
fi
# the options it uses are the broker's
for opt in --state --create --prefix --port-file --pid-file --metrics-port --metrics-bind --syslog; do
    "$BROKER" --help | grep -q -- "$opt" || { echo "test_systemd_unit: $opt unknown to the broker" >&2; exit 1; }
done
echo "test_systemd_unit: PASS"
