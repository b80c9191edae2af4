"""The systemd notify protocol (``sd_notify(3)``), written by hand over a datagram socket.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: an ``AF_UNIX`` datagram
socket, either a filesystem path or, when it starts with ``@``, a name in the abstract
namespace. Each datagram is newline-separated ``KEY=VALUE`` assignments: ``READY=1`` ends
start-up, ``WATCHDOG=1`` proves the main loop is alive, ``STOPPING=1`` announces an orderly
stop, ``STATUS=…`` is shown by ``systemctl status``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the same host code runs
in a terminal, under the tests and under systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

READY = "READY=1"
WATCHDOG = "WATCHDOG=1"
STOPPING = "STOPPING=1"

# systemd kills the service when no WATCHDOG=1 arrives within WatchdogSec; pinging at half
# the period (as sd_watchdog_enabled(3) recommends) leaves room for one late tick.
_WATCHDOG_FRACTION = 0.5


def _socket_address(value: str) -> str | bytes:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value (``@name`` is abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when the watchdog is off for us.

    ``$WATCHDOG_USEC`` carries WatchdogSec; ``$WATCHDOG_PID``, when set, names the one
    process meant to ping (a child inheriting the environment must not).
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000 * _WATCHDOG_FRACTION


class Notifier:
    """Sends notify messages to the service manager; silent when there is none.

    ``clock`` is injectable so tests can drive the watchdog throttle.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        # Only absolute paths and abstract names are valid; anything else is ignored as
        # libsystemd does, rather than sending to a path relative to our cwd.
        self._address: str | bytes | None = (
            _socket_address(raw) if raw.startswith(("/", "@")) else None
        )
        self._interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        self._clock = clock
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        return self._interval

    def send(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False when nobody listens."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(payload, self._address)
            except OSError:
                # The manager went away (e.g. a test socket closed, or systemd
                # re-executing); the service itself must keep working.
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        extra = (f"STATUS={status}",) if status else ()
        return self.send(READY, *extra)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        extra = (f"STATUS={status}",) if status else ()
        return self.send(STOPPING, *extra)

    def tick(self) -> bool:
        """Ping the watchdog if enabled and at least half a period has passed."""
        if self._interval is None or self._address is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self._interval:
            return False
        self._last_ping = now
        return self.send(WATCHDOG)
