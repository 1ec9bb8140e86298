#!/usr/bin/python3
"""divide_node.py - the divide node of "Using Messidge", in Python on libmessidge.

Serves divide {dividend, devisor} -> {quotient}; a ValueError (not two
floats, or a zero devisor) goes back to the caller. Keys from the
environment (preferred: the secret is then not visible in `ps`) or options:

    MESSIDGE_NODE_PK, MESSIDGE_NODE_SK   the node's key pair (base64)
    MESSIDGE_BROKER_PK                   the broker's public key (base64)

    divide_node.py [--node-pk B64] [--node-sk B64] [--broker-pk B64]
                   [--location HOST] [--port N]

Prints "divide_node: node ready ..." once the broker has admitted it; runs
until SIGINT or SIGTERM.
"""
import argparse
import os
import signal
import sys

from messidge import KeyPair
from messidge.client.connection import Connection, cmd


class Controller:
    def __init__(self, socket_factory):
        self.socket_factory = socket_factory

    def _divide(self, msg):
        # some additional validation
        if not isinstance(msg.params['dividend'], float) or not isinstance(msg.params['devisor'], float):
            raise ValueError("Divide only takes two floats.")
        if msg.params['devisor'] == 0:
            raise ValueError("Devisor cannot be zero")

        # go
        msg.reply(self.socket_factory(), results={'quotient': msg.params['dividend'] / msg.params['devisor']})

    commands = {b'divide': cmd(['dividend', 'devisor'], needs_reply=True)}


class Node:
    # The node is effectively just another client
    def __init__(self, location, server_pk, keys, port):
        # set up some objects
        self.connection = Connection(location, server_pk=server_pk, keys=keys,
                                     reflect_value_errors=True, port=port)
        self.controller = Controller(self.connection.send_skt)
        self.connection.register_commands(self.controller, Controller.commands)
        self.connection.start()

    def run(self):
        self.connection.wait_until_complete()

    def disconnect(self):
        self.connection.disconnect()


def main():
    ap = argparse.ArgumentParser(description="The divide node of the Using Messidge guide.")
    ap.add_argument('--node-pk', default=os.environ.get('MESSIDGE_NODE_PK'))
    ap.add_argument('--node-sk', default=os.environ.get('MESSIDGE_NODE_SK'))
    ap.add_argument('--broker-pk', default=os.environ.get('MESSIDGE_BROKER_PK'))
    ap.add_argument('--location', default='localhost')
    ap.add_argument('--port', type=int, default=2020)
    args = ap.parse_args()
    if not (args.node_pk and args.node_sk and args.broker_pk):
        print("divide_node: the node's key pair and the broker's public key are needed\n"
              "  (MESSIDGE_NODE_PK, MESSIDGE_NODE_SK, MESSIDGE_BROKER_PK, or --help)", file=sys.stderr)
        return 1

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    keys = KeyPair(public=args.node_pk, secret=args.node_sk)
    node = Node(args.location, args.broker_pk, keys, args.port)
    try:
        # a node needs no wait_until_ready: this only tells when it is admitted
        node.connection.wait_until_ready()
        print("divide_node: node ready (node %s, broker %s port %d)"
              % (keys.public_b64, args.location, args.port), flush=True)
        node.run()
        print("divide_node: the broker ended the session", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        node.disconnect()


if __name__ == '__main__':
    sys.exit(main())
