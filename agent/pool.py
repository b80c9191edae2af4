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
    """The child died or was killed (deadline overrun) before it answered.

    ``collateral``: it died on an earlier request, queued before this one (this file was
    not being protected; nothing says it is at fault)."""

    def __init__(self, message: str, collateral: bool = False) -> None:
        super().__init__(message)
        self.collateral = collateral


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
    dead: bool = False  # a read failed: whatever is still queued on it is lost too


#: Requests a worker holds at once: the one it protects and the next, already in its
#: input pipe, so that it starts the next file the moment it answered, instead of waiting
#: for a parent thread to be scheduled (and to get the GIL) to send it.
DEPTH = 2


class ProtectWorker:
    """One child process, shared by up to :data:`DEPTH` protect threads of the parent.

    :meth:`call` writes a request and waits for its answer; the child answers in order,
    so the callers read their answers in the order they wrote their requests.
    :meth:`kill_if_overdue`, called from the agent's health tick, kills a child whose
    answer is past its deadline (counted from when the child got to that request), which
    makes the waiting :meth:`call` raise :class:`WorkerLost`; a request queued behind it
    is lost with it (``WorkerLost.collateral``: not that file's fault).
    """

    def __init__(self, recipients: list[str], spool_dir: Path,
                 argv: list[str] | None = None, kernel: str | None = None) -> None:
        self.setup = {"recipients": recipients, "spool_dir": str(spool_dir),
                      "parent_pid": os.getpid(), "kernel": kernel}
        self.argv = argv or worker_argv()
        self.spool = Spool(spool_dir)
        self._child: _Child | None = None
        self._lock = threading.Lock()  # starting the child, writing requests, tickets
        self._turn = threading.Condition()  # answers are read in ticket order
        self._tickets = 0
        self._serving = 0
        self.inflight = 0
        self.deadline: float | None = None  # the answer being waited for is due by then
        self._reading: _Child | None = None  # ... from this child
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
            child = self._child
            if child is None or child.dead or child.proc.poll() is not None:
                child = self._child = self._start()
            ticket, self._tickets = self._tickets, self._tickets + 1
            self.inflight += 1
            try:
                write_frame(child.stdin, request)
            except OSError:
                child.dead = True  # gone already: noticed in turn, below
        answer: dict[str, Any] | None = None
        with self._turn:
            while self._serving != ticket:
                self._turn.wait()
            collateral = child.dead  # it died on a request written before this one
            self.deadline, self._reading = time.monotonic() + timeout_s, child
        try:
            if not child.dead:
                try:
                    answer = read_frame(child.stdout)
                except (OSError, ValueError):
                    answer = None
                if answer is None:
                    child.dead = True
        finally:
            with self._turn:
                self.deadline = self._reading = None
                self._serving += 1
                self.inflight -= 1
                self.last_used = time.monotonic()
                self._turn.notify_all()
        if answer is None:
            with self._lock:
                if self._child is child:
                    self._child = None
            self._reap(child)
            self.spool.discard_tmp_of(child.proc.pid)  # what it was writing is nobody's now
            raise WorkerLost("protect worker exited before answering", collateral=collateral)
        return answer

    def retire_if_idle(self, now: float, idle_s: float) -> bool:
        """End the child if it has had nothing to do for ``idle_s`` seconds: an idle
        agent holds no worker memory; the next file starts a new child (~0.3 s)."""
        if self._child is None or self.inflight or now - self.last_used < idle_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # a request is being written right now
        try:
            if self.inflight:
                return False
            child, self._child = self._child, None
            if child is None:
                return False
            self._reap(child, grace_s=10.0)
            return True
        finally:
            self._lock.release()

    def kill_if_overdue(self, now: float) -> bool:
        deadline, child = self.deadline, self._reading
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

    Each worker holds up to :data:`DEPTH` requests, and there are more threads than that
    (``agent.runner``), so that a worker has its next file queued while the thread that
    used it records the previous one in the journal: the children never wait for the
    parent's bookkeeping, nor for its threads to be scheduled.
    """

    def __init__(self, n: int, recipients: list[str], spool_dir: Path,
                 argv: list[str] | None = None, kernel: str | None = None) -> None:
        self.workers = [ProtectWorker(recipients, spool_dir, argv, kernel) for _ in range(n)]
        # each worker DEPTH times, round robin: the first files go to different workers
        self._free: queue.Queue[ProtectWorker] = queue.Queue()
        for _ in range(DEPTH):
            for w in self.workers:
                self._free.put(w)

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send ``request`` to the next worker with room; its deadline starts when the
        worker gets to it."""
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


