"""Shared fixtures: an in-process broker on a free loopback port, clients
with keys of their own, and where the demo programs are.

ctest runs these with PYTHONPATH=BUILD/python (the package as built) and
MDG_BUILD_DIR=BUILD (the C demo programs, for the mixed tests)."""
import os
import sys
import time

import pytest

import messidge
from messidge import KeyPair
from messidge.broker.bases import ModelMinimal
from messidge.broker.broker import Broker
from messidge.client.connection import Connection

HERE = os.path.dirname(os.path.abspath(__file__))
PY_DEMO = os.path.join(os.path.dirname(HERE), 'demo')
BUILD = os.environ.get('MDG_BUILD_DIR')
TIMEOUT = 20  # seconds: generous, for a busy machine


def wait_for(predicate, timeout=TIMEOUT, what="the condition"):
    """Poll predicate until true, within a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s did not happen within %s s" % (what, timeout))
        time.sleep(0.01)


@pytest.fixture
def broker_keys():
    return KeyPair.new()


def make_broker(keys, controller, model=None, **kw):
    b = Broker(keys, model if model is not None else ModelMinimal(), controller=controller,
               port=0, bind_address='127.0.0.1', allow_any=True, **kw)
    b.start()
    return b


def make_conn(broker, keys=None, start=True, controller=None, **kw):
    """A connection to broker; with controller, its commands are registered
    before it starts."""
    keys = keys or KeyPair.new()
    c = Connection('127.0.0.1', server_pk=broker.keys.public, keys=keys, port=broker.port, **kw)
    if controller is not None:
        c.register_commands(controller, controller.commands)
    if start:
        c.start().wait_until_ready(TIMEOUT)
    return c


def broker_and_conn(keys, controller, closing):
    """A broker serving controller and a connection to it, both in closing."""
    b = make_broker(keys, controller)
    closing.append(b)
    c = make_conn(b)
    closing.append(c)
    return b, c


@pytest.fixture
def closing():
    """Things to stop or disconnect at the end of a test, in reverse order."""
    things = []
    yield things
    for t in reversed(things):
        if hasattr(t, 'disconnect'):
            t.disconnect()
        else:
            t.stop()


def c_program(name):
    if not BUILD:
        pytest.skip("MDG_BUILD_DIR not set: the C programs are not known")
    path = os.path.join(BUILD, 'demo', name)
    if not os.access(path, os.X_OK):
        pytest.skip("%s not built" % path)
    return [path]


def py_program(name):
    return [sys.executable, '-u', os.path.join(PY_DEMO, name + '.py')]
