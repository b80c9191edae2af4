"""The parent side of protection: a pool of protect worker processes.

Each protect thread of the agent hands a settled file to the next free worker
(:class:`WorkerPool`); the child (``agent.protect``) answers with what it did. Why a
process and not a thread:

- throughput: the per-file Python work (DICOM walk, cipher set-up, age sealing, hashing)
  runs beside the parent's journal and network work instead of queueing for one GIL;
- containment: a cipher call that never returns, or a crash in native code, costs one
  child. The parent kills a child that overruns its deadline, starts a new one and
  protects the file again later with a fresh key.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.protect import WORKER_COMMAND, read_frame, write_frame
from agent.spool import Spool


class WorkerLost(Exception):
    """The child died or was killed (deadline overrun) before it answered."""


class WorkerStartFailed(WorkerLost):
    """No child could be started (a broken installation, not the file's fault)."""


def worker_argv() -> list[str]:
    """How to start a child: the frozen ``scanfort`` binary or this interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_COMMAND]
    python = sys.executable
    if os.path.basename(python).lower().startswith("pythonservice"):
        # Hosted by pywin32's service runner from a source install: its executable is not
        # an interpreter; the interpreter beside the installation is.
        python = os.path.join(sys.exec_prefix, "python.exe")
    return [python, "-m", "agent.protect"]


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    stdin: IO[bytes]
    stdout: IO[bytes]


class ProtectWorker:
    """One child process, used by one protect thread of the parent at a time.

    :meth:`call` sends a request and waits for the answer; :meth:`kill_if_overdue`, called
    from the agent's health tick, kills a child whose answer is past its deadline, which
    makes the waiting :meth:`call` raise :class:`WorkerLost`.
    """

    def __init__(self, recipients: list[str], spool_dir: Path,
                 argv: list[str] | None = None, kernel: str | None = None) -> None:
        self.setup = {"recipients": recipients, "spool_dir": str(spool_dir),
                      "parent_pid": os.getpid(), "kernel": kernel}
        self.argv = argv or worker_argv()
        self.spool = Spool(spool_dir)
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self.deadline: float | None = None
        self.last_used = time.monotonic()
        self.killed = 0
        self.started = 0
        self.kernel: str | None = None  # the chaos kernel the child said it runs

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.proc.pid

    def _start(self) -> _Child:
        creation = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    creationflags=creation, close_fds=True)
        except OSError as exc:
            raise WorkerStartFailed(f"cannot start a protect worker: {exc.strerror}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        child = _Child(proc, proc.stdin, proc.stdout)
        try:
            write_frame(child.stdin, self.setup)
            hello = read_frame(child.stdout)
        except OSError:
            hello = None
        if hello is None or hello.get("status") != "ready":
            self._reap(child)
            why = hello.get("reason") if hello else None
            raise WorkerStartFailed("protect worker did not start"
                                    + (f": {why}" if why else ""))
        self.started += 1
        self.kernel = str(hello.get("kernel") or "") or None
        return child

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        with self._lock:
            self.deadline = time.monotonic() + timeout_s
            try:
                if self._child is None or self._child.proc.poll() is not None:
                    self._child = self._start()
                child = self._child
                try:
                    write_frame(child.stdin, request)
                    answer = read_frame(child.stdout)
                except (OSError, ValueError):
                    answer = None
                if answer is None:
                    self._reap(child)
                    self._child = None
                    # what it was writing is nobody's now
                    self.spool.discard_tmp_of(child.proc.pid)
                    raise WorkerLost("protect worker exited before answering")
                return answer
            finally:
                self.deadline = None
                self.last_used = time.monotonic()

    def retire_if_idle(self, now: float, idle_s: float) -> bool:
        """End the child if it has had nothing to do for ``idle_s`` seconds: an idle
        agent holds no worker memory; the next file starts a new child (~0.3 s)."""
        if self._child is None or now - self.last_used < idle_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # in use right now
        try:
            child, self._child = self._child, None
            if child is None:
                return False
            self._reap(child, grace_s=10.0)
            return True
        finally:
            self._lock.release()

    def kill_if_overdue(self, now: float) -> bool:
        deadline, child = self.deadline, self._child
        if deadline is None or child is None or now < deadline:
            return False
        try:
            child.proc.kill()
        except OSError:
            return False
        self.killed += 1
        return True

    @staticmethod
    def _reap(child: _Child, grace_s: float = 0.0) -> None:
        """Close the pipes and end the child: at once, or after ``grace_s`` seconds in
        which it may finish the file in hand (it exits at the end of its input)."""
        with contextlib.suppress(OSError):
            child.stdin.close()
        if grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(grace_s)
        with contextlib.suppress(OSError):
            child.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(10)
        with contextlib.suppress(OSError):
            child.stdout.close()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop the child: end of its input lets it finish the current file and exit."""
        child, self._child = self._child, None
        if child is not None:
            self._reap(child, grace_s=grace_s)


class WorkerPool:
    """``n`` protect workers shared by the parent's protect threads.

    There are more threads than workers, so that a worker is handed the next file while
    the thread that used it records the previous one in the journal: the children never
    wait for the parent's bookkeeping.
    """

    def __init__(self, n: int, recipients: list[str], spool_dir: Path,
                 argv: list[str] | None = None, kernel: str | None = None) -> None:
        self.workers = [ProtectWorker(recipients, spool_dir, argv, kernel) for _ in range(n)]
        self._free: queue.Queue[ProtectWorker] = queue.Queue()
        for w in self.workers:
            self._free.put(w)

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``request`` to the next free worker; its deadline starts when it takes it."""
        worker = self._free.get()
        try:
            return worker.call(request, timeout_s)
        finally:
            self._free.put(worker)

    def status(self) -> dict[str, Any]:
        """For ``status.json`` and ``agent status``: how the workers fare."""
        pids = [w.pid for w in self.workers if w.pid is not None]
        kernels = sorted({w.kernel for w in self.workers if w.kernel})
        return {"processes": len(self.workers), "running": len(pids), "pids": pids,
                "started": self.started, "killed": self.killed, "kernels": kernels}

    def retire_idle(self, now: float, idle_s: float) -> int:
        return sum(w.retire_if_idle(now, idle_s) for w in self.workers)

    def kill_overdue(self, now: float) -> int:
        return sum(w.kill_if_overdue(now) for w in self.workers)

    @property
    def killed(self) -> int:
        return sum(w.killed for w in self.workers)

    @property
    def started(self) -> int:
        return sum(w.started for w in self.workers)

    def close(self, grace_s: float = 10.0) -> None:
        """End every child; together they get ``grace_s`` to finish the file in hand."""
        deadline = time.monotonic() + grace_s
        for w in self.workers:
            w.close(max(0.1, deadline - time.monotonic()))


