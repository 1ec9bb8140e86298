"""Brokers and connections still open when the interpreter exits are closed
first: their loop threads call into Python, which must not happen while it
finalizes."""
import atexit
import weakref

_live = weakref.WeakSet()


def track(obj):
    _live.add(obj)


@atexit.register
def _close_all():
    for obj in list(_live):
        try:
            obj._close_at_exit()
        except Exception:  # nothing to report to at exit
            pass
