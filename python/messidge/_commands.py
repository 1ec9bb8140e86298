"""Command tables declared the guide's way: a controller with a static
`commands` dict of cmd(...) and one handler per command, named '_' + name."""
import collections

from . import _core

Cmd = collections.namedtuple('Cmd', 'required needs_reply node_only')


def make_cmd(required=(), needs_reply=False, node_only=False):
    if isinstance(required, (str, bytes)):
        raise TypeError("cmd(): required params are a list of names, not one %s" % type(required).__name__)
    required = [r.decode() if isinstance(r, bytes) else r for r in required]
    for r in required:
        if not isinstance(r, str):
            raise TypeError("cmd(): a required param's name must be str, not %s" % type(r).__name__)
    return Cmd(tuple(required), bool(needs_reply), bool(node_only))


def command_name(name):
    if isinstance(name, bytes):
        return name.decode()
    if isinstance(name, str):
        return name
    raise TypeError("a command's name must be bytes or str, not %s" % type(name).__name__)


def table_rows(controller, commands):
    """[(name, handler, required, flags)] for the _core table."""
    if not isinstance(commands, dict):
        raise TypeError("commands must be a dict of name -> cmd(...), not %s" % type(commands).__name__)
    rows = []
    for name, spec in commands.items():
        name = command_name(name)
        if not isinstance(spec, Cmd):
            raise TypeError("commands[%r] must be made with cmd(...), not %s" % (name, type(spec).__name__))
        handler = getattr(controller, '_' + name, None)
        if not callable(handler):
            raise AttributeError("%s has no handler _%s for the command '%s'"
                                 % (type(controller).__name__, name, name))
        flags = (_core.CMD_NEEDS_REPLY if spec.needs_reply else 0) | \
                (_core.CMD_NODE_ONLY if spec.node_only else 0)
        rows.append((name, handler, list(spec.required), flags))
    return rows
