"""The guide's demo in Python on the C core, and mixed with the C demo
programs: every combination below runs the quickstart for real (invite,
confirm with create_account, register the node) and checks the client
prints the guide's output."""
import os
import re
import signal
import subprocess

import pytest

from conftest import TIMEOUT, c_program, py_program, wait_for
from messidge import Identity, KeyPair, create_account

EXPECTED = [
    r"Here are the notes: \['[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}'\]",
    r"This will print before the async callback is triggered\.\.\.",
    r"Async callback: \['[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}'\]",
    r"Expected! ValueError raised because: raise_exception was called",
    r"10\.0/5\.0=2\.0",
    r"Expected! ValueError raised because: Devisor cannot be zero",
]


def program(lang, name):
    return py_program(name) if lang == 'py' else c_program(name)


class Proc:
    """A child process whose stdout lines we read as they come."""

    def __init__(self, argv, env, cwd):
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def line(self):
        out = self.p.stdout.readline()  # the child flushes each line; a dead one gives ''
        if not out:
            raise AssertionError("%s exited early: %s" % (self.p.args, self.p.stderr.read()))
        return out.rstrip('\n')

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("%s did not stop on SIGTERM" % (self.p.args,))
        self.p.stdout.close()
        err = self.p.stderr.read()
        self.p.stderr.close()
        return rc, err


@pytest.mark.parametrize('broker,node,client', [
    ('py', 'py', 'py'),   # all Python
    ('c', 'c', 'py'),     # a Python client to a C node through the C broker
    ('py', 'py', 'c'),    # a C client to a Python node through the Python broker
    ('c', 'py', 'c'),     # a C client to a Python node through the C broker
    ('py', 'c', 'py'),    # a Python client to a C node through the Python broker
])
def test_demo(tmp_path, broker, node, client):
    env = dict(os.environ, MESSIDGE_PREFIX=str(tmp_path / 'keys'))
    state = str(tmp_path / 'state')
    with Identity(state) as ident:
        token = ident.invite('demo@example.com')

    b = Proc(program(broker, 'notes_broker') + ['--state', state, '--port', '0', '--account-port', '0',
                                                '--port-file', 'broker.port'], env, str(tmp_path))
    procs = [b]
    try:
        m = re.match(r"notes_broker: listening on port (\d+), accounts on port (\d+)$", b.line())
        assert m, "the broker did not say its ports"
        port, account_port = int(m.group(1)), int(m.group(2))
        m = re.match(r"notes_broker: broker public key (\S{44})$", b.line())
        assert m
        broker_pk = m.group(1)
        wait_for(lambda: (tmp_path / 'broker.port').exists(), what="the port file")

        # the user confirms the invitation (what `messidge confirm` does)
        create_account('localhost', token, port=account_port, prefix=env['MESSIDGE_PREFIX'])
        assert sorted(os.listdir(env['MESSIDGE_PREFIX'])) == \
            ['default_location', 'localhost', 'localhost.pub', 'localhost.spub', 'localhost_broker',
             'localhost_broker.pub']

        # the admin registers the node (what `messidge-admin add-node` does)
        node_keys = KeyPair.new()
        with Identity(state) as ident:
            ident.add_node('divide', node_keys.public)
        nenv = dict(env, MESSIDGE_NODE_PK=node_keys.public_b64, MESSIDGE_NODE_SK=node_keys.secret_b64,
                    MESSIDGE_BROKER_PK=broker_pk)
        n = Proc(program(node, 'divide_node') + ['--location', 'localhost', '--port', str(port)],
                 nenv, str(tmp_path))
        procs.append(n)
        assert n.line().startswith("divide_node: node ready (node %s" % node_keys.public_b64)

        out = subprocess.run(program(client, 'notes_client') + ['--port', str(port), '--require-node'],
                             env=env, cwd=str(tmp_path), capture_output=True, text=True,
                             timeout=TIMEOUT * 2)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == len(EXPECTED), out.stdout
        for line, pattern in zip(lines, EXPECTED):
            assert re.fullmatch(pattern, line), (line, pattern)
        # the note was written once, and both fetches saw it
        assert lines[0][len("Here are the notes: "):] == lines[2][len("Async callback: "):]
    finally:
        results = [p.stop() for p in reversed(procs)]
    for rc, err in results:
        assert rc == 0, err
