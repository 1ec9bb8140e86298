"""Accounts and the identity store: create_account against a broker's
account server, the key directory it writes, the store read back, node
config, and revocation."""
import json

import pytest

import messidge
from conftest import TIMEOUT, wait_for
from messidge import Identity, KeyPair, create_account, default_location
from messidge.broker.bases import ModelMinimal
from messidge.broker.broker import Broker, cmd
from messidge.client.connection import Connection
from messidge.identity import ROLE_NODE, ROLE_USER


class Who:
    def _whoami(self, msg):
        msg.reply({'user': msg.params['user']})
    commands = {b'whoami': cmd([], needs_reply=True)}


@pytest.fixture
def broker(tmp_path, broker_keys, closing):
    b = Broker(broker_keys, ModelMinimal(), controller=Who(), port=0, bind_address='127.0.0.1',
               state_dir=str(tmp_path / 'state'))
    closing.append(b)
    return b.start()


def test_create_account(tmp_path, broker, closing):
    prefix = str(tmp_path / 'keys')
    token = broker.identity.invite('user@example.com')
    assert [p['name'] for p in broker.identity.pending()] == ['user@example.com']

    create_account('localhost', token, port=broker.account_server.port, prefix=prefix)
    assert default_location(prefix) == 'localhost'
    keys = KeyPair('localhost', prefix=prefix)
    assert messidge.keys.server_pk('localhost', prefix) == broker.keys.public

    # the store, read back: the user is there, the invitation used
    users = broker.identity.users()
    assert [(u['name'], u['pk']) for u in users] == [('user@example.com', keys.public_b64)]
    assert broker.identity.pending() == []
    assert broker.identity.role(keys.public) == (ROLE_USER, '{}')

    # the guide's client: just the location; keys and broker key from the files
    c = Connection(default_location(prefix), prefix=prefix, port=broker.port)
    closing.append(c)
    c.start().wait_until_ready(TIMEOUT)
    assert c.send_blocking_cmd(b'whoami', timeout=TIMEOUT).params['user'] == keys.public

    # a used token, and an existing account, are refused with the reason
    with pytest.raises(messidge.Error, match="used"):
        create_account('127.0.0.1', token, port=broker.account_server.port, prefix=prefix)
    with pytest.raises(messidge.Error, match="exists"):
        create_account('localhost', token, port=broker.account_server.port, prefix=prefix)

    # revoked: the broker closes the session (it polls the store)
    broker.identity.revoke(keys.public)
    assert broker.identity.role(keys.public)[0] == 0
    assert c.wait_until_complete(TIMEOUT)
    with pytest.raises(messidge.ClosedError, match="revoked"):
        c.send_blocking_cmd(b'whoami', timeout=TIMEOUT)


def test_node_config(broker, closing):
    node_keys = KeyPair.new()
    broker.identity.add_node('divide', node_keys.public, json.dumps({'zone': 'a'}))
    assert broker.identity.role(node_keys.public) == (ROLE_NODE, '{"zone": "a"}')
    assert [n['name'] for n in broker.identity.nodes()] == ['divide']
    n = Connection('127.0.0.1', server_pk=broker.keys.public, keys=node_keys, port=broker.port)
    closing.append(n)
    n.start().wait_until_ready(TIMEOUT)
    wait_for(lambda: node_keys.public in broker.model.nodes, what="the node in the model")
    assert broker.model.nodes[node_keys.public].config == {'zone': 'a'}


def test_store_errors(tmp_path):
    (tmp_path / 'file').write_text('x')
    with pytest.raises(messidge.Error, match="not a directory"):
        Identity(str(tmp_path / 'file'))
    with Identity(str(tmp_path / 's')) as ident:
        with pytest.raises(messidge.Error, match="email"):
            ident.invite('has space@example.com')
        with pytest.raises(messidge.Error, match="JSON"):
            ident.add_node('n', KeyPair.new().public, '{not json')
    with pytest.raises(messidge.Error, match="closed"):
        ident.list()
