#!/usr/bin/python3
"""notes_client.py - the demo client of "Using Messidge", in Python on libmessidge.

Connects to the default location (key files in $MESSIDGE_PREFIX or
~/.messidge), writes a note, fetches the notes (blocking, then with a reply
callback), sees a handler's ValueError, then divides on every node the
broker offered, once well and once by zero.

    notes_client.py [--prefix DIR] [--port N] [--require-node]
"""
import argparse
import sys
import threading
import time

from messidge import default_location
from messidge.client.connection import Connection, cmd

OFFER_WAIT = 5.0  # seconds to poll for the resource offer


class Controller:
    def __init__(self):
        self.nodes = []
        self.offered = threading.Event()

    def _resource_offer(self, msg):
        self.nodes = msg.params['nodes']
        self.offered.set()

    commands = {b'resource_offer': cmd(['nodes'])}


def main():
    ap = argparse.ArgumentParser(description="The notes client of the Using Messidge guide.")
    ap.add_argument('--prefix', help="key directory (default $MESSIDGE_PREFIX or ~/.messidge)")
    ap.add_argument('--port', type=int, default=2020)
    ap.add_argument('--require-node', action='store_true', help="fail unless a node is offered")
    args = ap.parse_args()

    conn = Connection(default_location(args.prefix), prefix=args.prefix, port=args.port)
    controller = Controller()
    conn.register_commands(controller, Controller.commands)
    try:
        conn.start().wait_until_ready(10)

        # an asynchronous command
        conn.send_cmd(b'write_note', {'note': time.ctime(time.time())})

        # synchronous, but guaranteed to not be called before 'write_note' has been processed by the broker
        reply = conn.send_blocking_cmd(b'fetch_notes', timeout=10)
        print("Here are the notes: " + str(reply.params['notes']), flush=True)

        # asynchronous via callback
        # note that the callback is called by the background (loop) thread;
        # the lock keeps the guide's "prints before" true on a fast machine
        print_lock = threading.Lock()
        called = threading.Event()

        def async_callback(msg):
            with print_lock:
                print("Async callback: " + str(msg.params['notes']), flush=True)
            called.set()
        with print_lock:
            conn.send_cmd(b'fetch_notes', reply_callback=async_callback)
            print("This will print before the async callback is triggered...", flush=True)

        # an exception is raised from a blocking call
        try:
            conn.send_blocking_cmd(b'raise_exception', timeout=10)
        except ValueError as e:
            print("Expected! ValueError raised because: " + str(e), flush=True)
        if not called.wait(10):
            print("notes_client: the async callback never came", file=sys.stderr)
            return 1

        # the offer is not guaranteed to come: poll for it, bounded
        controller.offered.wait(OFFER_WAIT)
        if not controller.nodes:
            print("notes_client: " + ("the resource offer lists no nodes" if controller.offered.is_set()
                                      else "no resource offer arrived"), file=sys.stderr)
            if args.require_node:
                return 1

        # get the nodes to do something for us by passing their public key
        for node_pk in controller.nodes:
            reply = conn.send_blocking_cmd(b'divide', {'node': node_pk, 'dividend': 10.0, 'devisor': 5.0},
                                           timeout=10)
            print("10.0/5.0=" + str(reply.params['quotient']), flush=True)
            try:
                conn.send_blocking_cmd(b'divide', {'node': node_pk, 'dividend': 10.0, 'devisor': 0.0},
                                       timeout=10)
            except ValueError as e:
                print("Expected! ValueError raised because: " + str(e), flush=True)
            else:
                print("notes_client: dividing by zero did not fail", file=sys.stderr)
                return 1
        return 0
    finally:
        conn.disconnect()


if __name__ == '__main__':
    sys.exit(main())
