"""Bad input gives Python exceptions whose text says what is wrong."""
import pytest

import messidge
from conftest import TIMEOUT, broker_and_conn, make_broker, make_conn
from messidge import KeyPair
from messidge.broker.bases import ModelMinimal
from messidge.broker.broker import Broker, cmd
from messidge.client.connection import Connection


class Echo:
    def _echo(self, msg):
        msg.reply(msg.params)
    commands = {b'echo': cmd([], needs_reply=True)}


@pytest.fixture
def conn(broker_keys, closing):
    return broker_and_conn(broker_keys, Echo(), closing)[1]


@pytest.mark.parametrize('params,exc,text', [
    ([1, 2], TypeError, "params must be a dict, not list"),
    ({1: 'x'}, TypeError, "keys must be str, not int"),
    ({'x': object()}, TypeError, r"params\['x'\]: cannot send a value of type object"),
    ({'x': [1, {2}]}, TypeError, r"params\['x'\]: cannot send a value of type set"),
    ({'x': 2 ** 64}, OverflowError, r"params\['x'\]: integer out of the 64-bit range"),
    ({'x': -2 ** 64}, OverflowError, r"params\['x'\]: integer out of the 64-bit range"),
])
def test_bad_params(conn, params, exc, text):
    with pytest.raises(exc, match=text):
        conn.send_blocking_cmd(b'echo', params)
    with pytest.raises(exc, match=text):
        conn.send_cmd(b'echo', params)
    assert conn.send_blocking_cmd(b'echo', {'ok': 1}).params['ok'] == 1  # still fine


def test_bad_commands(conn):
    with pytest.raises(TypeError, match="the command must be bytes or str, not int"):
        conn.send_cmd(5)
    with pytest.raises(ValueError, match="the command name is empty"):
        conn.send_cmd(b'')
    with pytest.raises(TypeError, match="bulk must be bytes-like or None, not str"):
        conn.send_cmd(b'echo', bulk='text')
    with pytest.raises(TypeError, match="the reply callback is not callable"):
        conn.send_cmd(b'echo', reply_callback=3)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        conn.send_blocking_cmd(b'echo', timeout=-1)


def test_bad_keys(tmp_path):
    with pytest.raises(ValueError, match="server_pk must be 32 bytes long, not 5"):
        Connection('localhost', server_pk=b'short', keys=KeyPair.new())
    with pytest.raises(ValueError, match="not a base64 32-byte key"):
        KeyPair(public='not base64!', secret='x')
    with pytest.raises(TypeError, match="needs a name to load, or both public= and secret="):
        KeyPair()
    # missing key files: a RuntimeError (the guide catches that) that names the file
    with pytest.raises(RuntimeError, match=str(tmp_path)) as e:
        KeyPair('nothing_here', prefix=str(tmp_path))
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, messidge.NotFoundError)
    with pytest.raises(messidge.NotFoundError):
        Connection('nowhere', prefix=str(tmp_path))
    # a key pair whose halves do not match
    a, b = KeyPair.new(), KeyPair.new()
    with pytest.raises(messidge.Error, match="match"):
        KeyPair(public=a.public, secret=b.secret)


def test_bad_tables(broker_keys):
    class NoHandler:
        commands = {b'missing': cmd([])}

    class NotCmd:
        def _x(self, msg):
            pass
        commands = {b'x': ['a']}
    with pytest.raises(AttributeError, match="NoHandler has no handler _missing"):
        Broker(broker_keys, ModelMinimal(), controller=NoHandler(), port=0, allow_any=True)
    with pytest.raises(TypeError, match=r"commands\['x'\] must be made with cmd"):
        Broker(broker_keys, ModelMinimal(), controller=NotCmd(), port=0, allow_any=True)
    with pytest.raises(TypeError, match="a list of names, not one str"):
        cmd('note')


def test_wrong_order(broker_keys, closing):
    b = make_broker(broker_keys, Echo())
    closing.append(b)
    c = make_conn(b, start=False)
    with pytest.raises(messidge.Error, match="start"):
        c.send_cmd(b'echo')
    c.start().wait_until_ready(TIMEOUT)
    with pytest.raises(messidge.Error, match="start"):
        c.register_commands(Echo(), Echo.commands)  # after start
    c.disconnect()
    with pytest.raises(messidge.Error, match="closed"):
        c.send_blocking_cmd(b'echo')
    c.disconnect()  # twice is fine


def test_refused_key(tmp_path, broker_keys, closing):
    # a broker with an identity store admits only the keys it knows
    b = Broker(broker_keys, ModelMinimal(), controller=Echo(), port=0, bind_address='127.0.0.1',
               state_dir=str(tmp_path / 'state'), accounts=False)
    closing.append(b)
    b.start()
    c = make_conn(b, start=False)
    closing.append(c)
    c.start()
    with pytest.raises(messidge.AuthError):
        c.wait_until_ready(TIMEOUT)
