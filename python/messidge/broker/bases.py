"""Base classes of a broker's model and its per-session and per-node objects."""


class ModelMinimal:
    """The broker's model: .sessions (session id -> session object) and
    .nodes (node pk -> node object), kept up to date by the broker."""

    def __init__(self):
        self.sessions = {}
        self.nodes = {}

    def resources(self, pk):
        """The resource offer pushed to a new session of user pk (a dict,
        or None for none). By default: every connected node's key."""
        return {'nodes': list(self.nodes.keys())}


class SessionMinimal:
    """A user's session: rid is the session id (bytes), pk the user's key.
    nonce is kept for the original's signature; libmessidge has none (the
    link is CURVE-encrypted), so it is None."""

    def __init__(self, rid, pk, nonce):
        self.rid = rid
        self.pk = pk
        self.nonce = nonce


class NodeMinimal:
    """A connected node: pk its key; msg is None (a node joins by its
    handshake, not by a message); config its config (a dict) from the
    identity store, {} without one."""

    def __init__(self, pk, msg, config):
        self.pk = pk
        self.msg = msg
        self.config = config
