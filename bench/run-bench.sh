#!/usr/bin/env bash
# run-bench.sh [BUILD_DIR [mdg_bench options]] - the benchmark suite, as
# `make bench` runs it once the build is done.
#
# Starts two nats-servers on free loopback ports (plain, and TLS with a
# self-signed certificate made here with openssl), runs mdg_bench against
# them, and stops them again. A full run (no extra options) writes
# bench/results.json and puts the table into bench/README.md; a partial one
# (e.g. `bench/run-bench.sh build-bench --runs 1 --secs 0.3 --only rtt`)
# writes BUILD_DIR/bench/results.json and leaves the README alone.
# BENCH_WRAPPER="valgrind --leak-check=full" bench/run-bench.sh build-bench
# --runs 1 --secs 0.2 runs the program under valgrind.
# The Python client rows (bench_python.py, messidge for Python of
# BUILD_DIR/python) follow mdg_bench's; `--only python` runs just them.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build-bench}
[ $# -gt 0 ] && shift
bin=$build/bench/mdg_bench
if [ ! -x "$bin" ]; then
  echo "run-bench.sh: no $bin (make bench builds it)" >&2
  exit 1
fi

tmp=$(mktemp -d /tmp/mdg-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_nats NAME EXTRA_CONFIG: a nats-server on 127.0.0.1 and a port of its
# choosing; sets NATS_PORT from its log.
start_nats() {
  local conf=$tmp/$1.conf log=$tmp/$1.log
  printf 'listen: "127.0.0.1:-1"\nmax_payload: 8MB\n%s\n' "$2" >"$conf"
  nats-server -c "$conf" -l "$log" &
  pids+=($!)
  NATS_PORT=""
  for _ in $(seq 100); do
    NATS_PORT=$(sed -n 's/.*Listening for client connections on 127\.0\.0\.1:\([0-9]*\).*/\1/p' \
      "$log" 2>/dev/null | head -n 1)
    [ -n "$NATS_PORT" ] && return 0
    sleep 0.1
  done
  echo "run-bench.sh: nats-server ($1) did not start; see below" >&2
  cat "$log" >&2 || true
  return 1
}

args=()
if command -v nats-server >/dev/null; then
  if start_nats plain ""; then
    args+=(--nats "nats://127.0.0.1:$NATS_PORT")
  fi
  if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj /CN=localhost \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" >/dev/null 2>&1 &&
    start_nats tls "tls { cert_file: \"$tmp/cert.pem\", key_file: \"$tmp/key.pem\" }"; then
    args+=(--nats-tls "tls://127.0.0.1:$NATS_PORT" --nats-ca "$tmp/cert.pem")
  fi
else
  echo "run-bench.sh: nats-server is not installed: the NATS columns will say n/a" >&2
fi

if [ $# -eq 0 ]; then
  json=$here/results.json
else
  json=$build/bench/results.json
fi
# "python" in --only is ours (the Python rows), not mdg_bench's; --runs and
# --secs go to both.
opts=() py_opts=() run_py=yes run_c=yes
while [ $# -gt 0 ]; do
  case $1 in
    --only)
      only=$(printf '%s' "${2:-}" | tr ',' '\n' | { grep -vx python || true; } | paste -sd, -)
      case ",${2:-}," in *,python,*) ;; *) run_py=no ;; esac
      if [ -n "$only" ]; then opts+=(--only "$only"); else run_c=no; fi
      shift 2 ;;
    --runs|--secs)
      opts+=("$1" "${2:-}")
      py_opts+=("$1" "${2:-}")
      shift 2 ;;
    *)
      opts+=("$1")
      shift ;;
  esac
done
rm -f "$tmp/table.txt"
if [ "$run_c" = yes ]; then
  # BENCH_WRAPPER runs the program under a tool, e.g. "valgrind --leak-check=full".
  ${BENCH_WRAPPER:-} "$bin" "${args[@]}" --json "$json" --table "$tmp/table.txt" ${opts[@]+"${opts[@]}"}
else
  rm -f "$json" # the Python rows alone: a results file of their own
fi
if [ "$run_py" = yes ]; then
  if [ -f "$build/python/messidge/__init__.py" ] && [ -x /usr/bin/python3 ]; then
    /usr/bin/python3 "$here/bench_python.py" "$build" ${py_opts[@]+"${py_opts[@]}"} \
      --json "$json" --table "$tmp/table.txt"
  else
    echo "run-bench.sh: no messidge for Python in $build/python: the Python rows are skipped" >&2
  fi
fi
echo "results: $json"

# A full run refreshes the table in the README (between the markers).
readme=$here/README.md
if [ ${#opts[@]} -eq 0 ] && [ "$run_c" = yes ] && grep -q '<!-- bench-table-start -->' "$readme" 2>/dev/null; then
  awk -v table="$tmp/table.txt" '
    /<!-- bench-table-start -->/ { print; print "```text"; while ((getline l < table) > 0) print l;
                                   print "```"; skip = 1; next }
    /<!-- bench-table-end -->/   { skip = 0 }
    !skip { print }' "$readme" >"$tmp/README.md" && cat "$tmp/README.md" >"$readme"
  echo "table: $readme"
fi
