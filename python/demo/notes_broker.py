#!/usr/bin/python3
"""notes_broker.py - the demo broker of "Using Messidge", in Python on libmessidge.

It keeps a list of notes for every user (namespaced by the user's public
key) and serves write_note {note}, fetch_notes {} -> {notes} and
raise_exception {} (a ValueError the caller sees). Who may connect comes
from the identity store in --state, with the account server on the base
port + 1 (as the C notes_broker and `messidge-admin`).

    notes_broker.py [--prefix DIR] [--state DIR] [--port N] [--port-file FILE]
                    [--account-port N] [--bind ADDR] [--verbose]

Prints, once serving,
    notes_broker: listening on port N, accounts on port M
    notes_broker: broker public key B64
then writes the port file, if asked for; runs until SIGINT or SIGTERM.
"""
import argparse
import logging
import signal
import sys

from messidge import KeyPair, NotFoundError
from messidge.broker.bases import ModelMinimal, SessionMinimal, NodeMinimal
from messidge.broker.broker import Broker, cmd


class MyModel(ModelMinimal):
    def __init__(self):
        super().__init__()
        self.pk_notes = {}  # maps user pk onto the list of notes they made

    def add_note(self, pk, note):
        if pk not in self.pk_notes:
            self.pk_notes[pk] = []
        self.pk_notes[pk].append(note)

    def notes_for(self, pk):
        try:
            return self.pk_notes[pk]
        except KeyError:  # no notes for this pk
            return []

    def resources(self, pk):
        return {'nodes': list(self.nodes.keys())}  # materialise the generator (keys)


class MyController:
    def __init__(self, model):
        self.model = model

    def _write_note(self, msg):
        if not isinstance(msg.params['note'], str):
            raise ValueError("'note' must be a text string")
        self.model.add_note(msg.params['user'], msg.params['note'])

    def _fetch_notes(self, msg):
        msg.reply({'notes': self.model.notes_for(msg.params['user'])})

    def _raise_exception(self, msg):
        raise ValueError("raise_exception was called")

    commands = {
        b'write_note': cmd(['note']),
        b'fetch_notes': cmd([], needs_reply=True),
        b'raise_exception': cmd([], needs_reply=True),
    }


class MySession(SessionMinimal):
    def __init__(self, rid, pk, nonce):
        super().__init__(rid, pk, nonce)
        logging.debug("I am the right kind of session object.")


class MyNode(NodeMinimal):
    def __init__(self, pk, msg, config):
        super().__init__(pk, msg, config)
        logging.debug("I am the right kind of node object.")


def main():
    ap = argparse.ArgumentParser(description="The notes broker of the Using Messidge guide.")
    ap.add_argument('--prefix', help="key directory (default $MESSIDGE_PREFIX or ~/.messidge)")
    ap.add_argument('--state', help="identity store directory (default ./messidge-state)")
    ap.add_argument('--port', type=int, default=2020, help="base port (0: any free port)")
    ap.add_argument('--account-port', type=int, default=None,
                    help="account server port (default base port + 1; free when --port is 0)")
    ap.add_argument('--port-file', help="write the bound base port here once serving")
    ap.add_argument('--bind', default='127.0.0.1', help="interface to listen on")
    ap.add_argument('--verbose', action='store_true', help="debug logging")
    args = ap.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='notes_broker %(levelname)s: %(message)s')

    # fetch/create the server keys
    try:
        keys = KeyPair('localhost_broker', prefix=args.prefix)
    except RuntimeError:  # assume it can't find the keys, let's generate more
        keys = KeyPair.new('localhost_broker', prefix=args.prefix)

    # create the objects
    model = MyModel()
    controller = MyController(model)
    broker = Broker(keys, model, MyNode, MySession, controller, port=args.port,
                    bind_address=args.bind, state_dir=args.state, account_port=args.account_port)

    # SIGTERM stops it as Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # run the broker, ensuring it gets stopped if there's an uncaught exception
    try:
        broker.start()
        print("notes_broker: listening on port %d, accounts on port %d\n"
              "notes_broker: broker public key %s" % (broker.port, broker.account_server.port,
                                                      keys.public_b64), flush=True)
        if args.port_file:
            with open(args.port_file + '.tmp', 'w') as f:
                f.write('%d\n' % broker.port)
            import os
            os.rename(args.port_file + '.tmp', args.port_file)
        broker.run()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
