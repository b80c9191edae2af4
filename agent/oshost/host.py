"""Hosting the agent loop under a service manager, independent of which one.

The agent's ``run(config, stop, on_ready, on_tick)`` blocks until ``stop`` is set. A host
wires it to a :class:`Reporter` (systemd notify, the Windows SCM) and to the stop request
(SIGTERM, a Service Control Manager stop). Stopping only sets the event: the loop finishes
or parks its in-flight work and the journal resumes it on the next start, so nothing is
lost by a stop or a restart.
"""

from __future__ import annotations

import enum
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol, TextIO

from agent.oshost.notify import Notifier

# sysexits.h EX_CONFIG: the unit sets RestartPreventExitStatus=78 so an invalid config is
# reported once instead of being restarted in a loop.
EXIT_CONFIG = 78
EXIT_FAILURE = 1


class Runner(Protocol):
    """The agent loop's signature (``agent.runner.run``)."""

    def __call__(
        self,
        config: Any,
        stop: threading.Event,
        on_ready: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None: ...


class Reporter(Protocol):
    """What a service manager is told about the loop's life."""

    def ready(self) -> None: ...

    def tick(self) -> None: ...

    def stopping(self) -> None: ...

    def failed(self, error: BaseException) -> None: ...


def default_runner() -> Runner:
    from agent.runner import run

    return run


def describe(error: BaseException) -> str:
    """A log-safe one-line description of an unexpected error.

    Only the class name: messages of arbitrary exceptions may carry file names, and raw
    file names can identify a patient (they never go into logs or events).
    """
    return f"{type(error).__module__}.{type(error).__qualname__}"


def host(config: Any, stop: threading.Event, reporter: Reporter, runner: Runner) -> None:
    """Run the loop until ``stop`` is set, reporting to ``reporter``; re-raises failures."""
    try:
        runner(config, stop, on_ready=reporter.ready, on_tick=reporter.tick)
    except BaseException as exc:
        reporter.failed(exc)
        raise
    finally:
        stop.set()
        reporter.stopping()


class SystemdReporter:
    """Reports to systemd through the notify socket (no-op outside systemd)."""

    def __init__(self, notifier: Notifier, stderr: TextIO | None = None) -> None:
        self._notifier = notifier
        self._stderr = stderr
        self._stopping_sent = False
        self._lock = threading.Lock()

    def ready(self) -> None:
        self._notifier.ready("watching")
        # The first ping right away: the watchdog period starts at READY=1.
        self._notifier.tick()

    def tick(self) -> None:
        self._notifier.tick()

    def stopping(self) -> None:
        with self._lock:
            if self._stopping_sent:
                return
            self._stopping_sent = True
        self._notifier.stopping("stopping: finishing or parking in-flight work")

    def failed(self, error: BaseException) -> None:
        text = f"failed: {describe(error)}"
        self._notifier.status(text)
        out = self._stderr or sys.stderr
        out.write(f"scanfort: error: agent loop {text}\n")
        out.flush()


@contextmanager
def stop_on_signals(
    stop: threading.Event,
    on_stop: Callable[[], None],
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (once announced through ``on_stop``) for the block's life."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            on_stop()
            stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_systemd_host(
    config: Any,
    *,
    runner: Runner | None = None,
    notifier: Notifier | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``scanfort service run-host`` on Linux: the loop under systemd; returns an exit code."""
    reporter = SystemdReporter(notifier or Notifier(), stderr)
    stop = threading.Event()
    with stop_on_signals(stop, reporter.stopping):
        try:
            host(config, stop, reporter, runner or default_runner())
        except Exception:
            # Restart=on-failure brings the loop back; the journal resumes its work.
            return EXIT_FAILURE
    return 0


class Outcome(enum.Enum):
    CLEAN = "clean"  # the loop returned after the stop request
    FAILED = "failed"  # the loop raised
    TIMEOUT = "timeout"  # the loop did not return within the stop deadline


def host_in_thread(
    config: Any,
    stop: threading.Event,
    reporter: Reporter,
    runner: Runner,
    *,
    stop_timeout: float,
    poll: float = 0.5,
) -> Outcome:
    """Run the loop in a worker thread and give it ``stop_timeout`` seconds once stopped.

    For service managers that enforce a stop deadline but cannot kill us (the Windows SCM
    expects STOPPED within the announced wait hint). Past the deadline the process exits
    anyway: whatever was in flight is in the journal and resumes on the next start.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            host(config, stop, reporter, runner)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target, name="scanfort-agent", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        worker.join(poll)
    worker.join(stop_timeout)
    if worker.is_alive():
        return Outcome.TIMEOUT
    return Outcome.FAILED if errors else Outcome.CLEAN
