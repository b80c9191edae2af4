"""Named crash points: where a crash changes what is on disk (tests only).

With ``SCANFORT_TEST_CRASH_AT=<point>`` (or ``<point>@<n>``: the n-th time it is reached)
in its environment, a process ends with ``os._exit(CRASH_EXIT)`` at that point, in the
agent or in a protect worker: no clean-up, no flush, as close to a power cut as a test can
get without one. With ``SCANFORT_TEST_CRASH_ONCE=<marker path>`` as well, only the first
process to get there crashes (it creates the marker first), so a restarted agent and new
workers run normally. Unset (always, outside the crash-matrix test) :func:`reached` costs
one comparison.
"""

from __future__ import annotations

import os
import threading

ENV = "SCANFORT_TEST_CRASH_AT"
ONCE_ENV = "SCANFORT_TEST_CRASH_ONCE"
CRASH_EXIT = 86

#: Every point, in the order a file meets them.
POINTS: tuple[str, ...] = (
    "protect.before_rename",       # worker: copy written and fsync'd, not yet in the spool
    "protect.after_rename",        # worker: copy in the spool, the parent not yet told
    "journal.before_protected",    # agent: answer in hand, item not recorded
    "journal.after_protected",     # agent: item, artifacts, deliveries committed
    "send.before",                 # sender: about to hand the copy to the destination
    "send.after_ack",              # sender: destination acknowledged, not yet recorded
    "journal.after_delivery",      # sender: acknowledgement committed
    "finalize.before_after_ack",   # finalize: journal synced, plaintext not yet touched
    "finalize.after_after_ack",    # finalize: plaintext moved/deleted, item not yet done
    "finalize.after_done",         # finalize: item done, artifacts not yet removed
)


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, nth = value.partition("@")
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {name!r}")
    return name, int(nth or "1")


_TARGET = _parse(os.environ.get(ENV))
_lock = threading.Lock()
_hits = 0


def reached(name: str) -> None:
    """Crash here if this is the configured point (and its n-th hit)."""
    global _hits
    if _TARGET is None or _TARGET[0] != name:
        return
    with _lock:
        _hits += 1
        if _hits < _TARGET[1]:
            return
        marker = os.environ.get(ONCE_ENV)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # another process already crashed here
        os._exit(CRASH_EXIT)
