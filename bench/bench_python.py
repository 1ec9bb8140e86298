#!/usr/bin/python3
"""bench_python.py BUILD_DIR [--runs N] [--secs S] [--json FILE] [--table FILE]

The Python client rows of `make bench`: messidge for Python (BUILD/python)
calling a C broker and a C node (mdg_bench serve-mdg-node, in a process of
its own), with the 64-byte params of the C rows. Blocking calls (sync) and
reply callbacks with up to 1,000 calls in flight, topped up in batches of
100 (pipelined), through the broker (echo) and through the node
(node_echo). Each figure is the median of --runs runs of --secs seconds
after a 0.2 s warm-up, set beside the original Python Messidge's figures
of bench/README.md (target: at least 5x). Appends its rows to --table and
a "python_client" section to --json (as written by mdg_bench, or new).
"""
import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time

# The original Python Messidge on this class of machine (bench/README.md).
ORIGINAL = {'broker_sync': 4066, 'node_sync': 2543, 'broker_pipelined': 17909,
            'node_pipelined': 17909}
TARGET_RATIO = 5.0
PAYLOAD = bytes(range(59))  # {"d": 59 bytes} is 64 bytes of CBOR
WINDOW, BATCH = 1000, 100
WARMUP = 0.2


def sync_run(conn, command, params, secs):
    """Blocking calls for secs: (calls/s, p50 in us)."""
    lat = []
    end = time.perf_counter() + secs
    t0 = time.perf_counter()
    while True:
        a = time.perf_counter()
        if a >= end:
            break
        conn.send_blocking_cmd(command, params, timeout=10)
        lat.append(time.perf_counter() - a)
    return len(lat) / (time.perf_counter() - t0), statistics.median(lat) * 1e6


def pipelined_run(conn, command, params, secs):
    """Calls with reply callbacks, WINDOW in flight: replies/s."""
    cond = threading.Condition()
    state = {'in_flight': 0, 'replies': 0, 'errors': 0}

    def on_reply(msg):
        with cond:
            state['in_flight'] -= 1
            state['replies'] += 1
            if msg.error is not None:
                state['errors'] += 1
            if state['in_flight'] <= WINDOW - BATCH:
                cond.notify()
    t0 = time.perf_counter()
    end = t0 + secs
    while time.perf_counter() < end:
        with cond:
            while state['in_flight'] > WINDOW - BATCH:
                cond.wait(0.5)
            state['in_flight'] += BATCH
        for _ in range(BATCH):
            conn.send_cmd(command, params, reply_callback=on_reply)
    with cond:
        replies, t1 = state['replies'], time.perf_counter()
        while state['in_flight'] > 0:  # drain before the next run
            if not cond.wait(10):
                raise RuntimeError("replies stopped coming (%d in flight)" % state['in_flight'])
    if state['errors']:
        raise RuntimeError("%d calls failed" % state['errors'])
    return replies / (t1 - t0)


def measure(fn, runs, secs):
    fn(WARMUP)
    return statistics.median(fn(secs) for _ in range(runs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('build')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--secs', type=float, default=1.0)
    ap.add_argument('--json')
    ap.add_argument('--table')
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.build, 'python'))
    import messidge
    from messidge.client.connection import Connection

    server = subprocess.Popen([os.path.join(args.build, 'bench', 'mdg_bench'), 'serve-mdg-node'],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rows, why = [], None
    try:
        ready = server.stdout.readline().split()
        if len(ready) != 4 or ready[0] != 'READY':
            raise RuntimeError("mdg_bench serve-mdg-node did not start")
        port, broker_pk, node_pk = int(ready[1]), ready[2], ready[3]
        conn = Connection('127.0.0.1', server_pk=broker_pk, keys=messidge.KeyPair.new(), port=port)
        conn.start().wait_until_ready(10)
        paths = {'broker': ('echo', {'d': PAYLOAD}),
                 'node': ('node_echo', {'d': PAYLOAD, 'node': base64.b64decode(node_pk)})}
        for path, (command, params) in paths.items():
            r = conn.send_blocking_cmd(command, params, timeout=10)
            if r.params.get('d') != PAYLOAD:
                raise RuntimeError("the %s echo came back changed" % path)
            sync_run(conn, command, params, WARMUP)
            sync = [sync_run(conn, command, params, args.secs) for _ in range(args.runs)]
            rate = statistics.median(s[0] for s in sync)
            p50 = statistics.median(s[1] for s in sync)
            pipe = measure(lambda s: pipelined_run(conn, command, params, s), args.runs, args.secs)
            rows.append(('%s_sync' % path, 'Python client, %s RTT, 64 B' % path, 'calls/s', rate))
            rows.append(('%s_sync_p50' % path, 'Python client, %s RTT, 64 B, p50' % path, 'us', p50))
            rows.append(('%s_pipelined' % path, 'Python client, %s pipelined' % path, 'replies/s',
                         pipe))
        conn.disconnect()
    except Exception as e:  # the rest of the bench stands; say why these rows are missing
        why = str(e)
    finally:
        server.stdin.close()
        server.wait(30)

    lines = ['', 'messidge for Python (/usr/bin/python3 %s), a Python client on the C broker and node'
             % sys.version.split()[0],
             '%-38s %-9s %12s %10s %7s' % ('figure', 'unit', 'Python/C', 'original', 'ratio')]
    figures, targets = [], []
    if why:
        lines.append('  n/a: %s' % why)
    for fid, label, unit, value in rows:
        orig = ORIGINAL.get(fid)
        ratio = value / orig if orig else None
        lines.append('%-38s %-9s %12.1f %10s %7s' % (label, unit, value, orig or '-',
                                                      '%.2fx' % ratio if ratio else '-'))
        figures.append({'id': 'python.' + fid, 'label': label, 'unit': unit, 'python': value,
                        'original': orig, 'python_over_original': ratio})
        if ratio:
            ok = ratio >= TARGET_RATIO
            targets.append({'target': '%s >= %gx the original Python Messidge' % (label, TARGET_RATIO),
                            'value': '%.2fx' % ratio, 'result': 'PASS' if ok else 'FAIL'})
    if targets:
        lines.append('')
        lines.append('targets (the original: bench/README.md; pipelined via node compared with its '
                     'one pipelined figure)')
        for t in targets:
            lines.append('  %-52s %-30s %s' % (t['target'], t['value'], t['result']))
    text = '\n'.join(lines) + '\n'
    print(text, end='')
    if args.table:
        with open(args.table, 'a') as f:
            f.write(text)
    if args.json:
        data = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                data = json.load(f)
        data['python_client'] = {'python': sys.version.split()[0], 'figures': figures,
                                 'targets': targets, 'why_missing': why}
        with open(args.json, 'w') as f:
            json.dump(data, f, indent=1)
            f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
