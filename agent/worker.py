"""Protection in a child process: the agent's protect workers.

The parent process keeps the watchers, the journal and the senders; each protect thread
of the parent owns one child process that reads a settled file, checks that a DICOM file
is complete, protects it once per protection mode its destinations need and leaves the
protected copies in the spool (temporary file, fsync, rename, fsync of the directory).
Why a process and not a thread:

- throughput: the per-file Python work (DICOM walk, cipher set-up, age sealing, hashing)
  runs beside the parent's journal and network work instead of queueing for one GIL;
- containment: a cipher call that never returns, or a crash in native code, costs one
  child. The parent kills a child that overruns its deadline, starts a new one and
  protects the file again later with a fresh key.

Wire format: frames of a 4-byte big-endian length and a UTF-8 JSON object, parent → child
on the child's stdin, child → parent on its stdout. The first frame configures the child
(recipients, spool dir); then each request frame is one file and gets one answer frame.
The child never touches the journal and never logs file names or patient attributes; the
spool names it picks are random, so a child orphaned by a killed parent cannot overwrite
anything the journal knows (``Agent.recover`` removes unknown spool files at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

_LEN = struct.Struct(">I")
_MAX_FRAME = 16 << 20
#: DICOM files up to this size are read into memory for the completeness walk.
_WALK_IN_MEMORY_MAX = 8 << 20
#: The command word that makes the ``scanfort`` executable (frozen or not) a worker.
WORKER_COMMAND = "_protect-worker"


class WorkerLost(Exception):
    """The child died or was killed (deadline overrun) before it answered."""


class WorkerStartFailed(WorkerLost):
    """No child could be started (a broken installation, not the file's fault)."""


# --------------------------------------------------------------------------- framing


def write_frame(fh: IO[bytes], obj: dict[str, Any]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    fh.write(_LEN.pack(len(data)) + data)
    fh.flush()


def read_frame(fh: IO[bytes]) -> dict[str, Any] | None:
    """The next frame, or None at end of stream (the other side is gone)."""
    head = _read_exact(fh, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > _MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    body = _read_exact(fh, n)
    if body is None:
        return None
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("frame is not an object")
    return obj


def _read_exact(fh: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = fh.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


# --------------------------------------------------------------------------- the child


def plan_modes(dest_modes: list[str], is_image: bool) -> list[str | None]:
    """Per destination, the protection mode of this file, or None when it cannot take it.

    ``auto`` is DICOM mode for a complete DICOM image and file mode for anything else; a
    ``dicom`` destination cannot take a file that is not a DICOM image.
    """
    plan: list[str | None] = []
    for mode in dest_modes:
        if mode == "auto":
            mode = "dicom" if is_image else "file"
        plan.append(None if mode == "dicom" and not is_image else mode)
    return plan


class _HashingReader:
    """Wraps the source: hashes exactly the bytes the cipher consumed."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.hash, self.count = fh, hashlib.sha256(), 0
        self.seeked = False

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.fh.seek(offset, whence)
        if pos != self.count:
            self.seeked = True  # not a plain front-to-back read: hash the file separately
        return pos

    def tell(self) -> int:
        return self.fh.tell()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


class _HashingWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.hash, self.count = fh, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.count += len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


class _Changed(Exception):
    """The source changed while it was being protected."""


class _Orphaned(Exception):
    """The parent is gone: nothing may be added to the spool any more."""


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Protector:
    """What one child does for one file; also usable in-process (tests, tools)."""

    def __init__(self, recipients: list[str], spool_dir: Path,
                 parent_pid: int | None = None) -> None:
        import cipher  # the child's heavy imports happen here, not in the parent

        self._cipher = cipher
        self.recipients = recipients
        self.spool_dir = spool_dir
        self.tmp_dir = spool_dir / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.parent_pid = parent_pid

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        path, size, mtime_ns = str(req["path"]), int(req["size"]), int(req["mtime_ns"])
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {"status": "vanished"}
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return {"status": "changed"}
        dest_modes = [str(m) for m in req["modes"]]
        kind = self._dicom_kind(path, any(m in ("auto", "dicom") for m in dest_modes))
        if kind == "incomplete":
            return {"status": "incomplete"}
        plan = plan_modes(dest_modes, kind == "image")
        if not any(plan):
            reason = ("not a dicom image: no destination of this folder accepts other files"
                      if kind != "image" else "no destination")
            return {"status": "unplannable", "reason": reason, "plan": plan}
        arts: list[dict[str, Any]] = []
        source_sha: str | None = None
        try:
            for mode in sorted({m for m in plan if m}):
                art, sha = self._protect(path, size, mtime_ns, mode)
                arts.append(art)
                if source_sha is not None and sha != source_sha:
                    raise _Changed()
                source_sha = sha
        except _Changed:
            self._discard(arts)
            return {"status": "changed"}
        except FileNotFoundError:
            self._discard(arts)
            return {"status": "vanished"}
        except self._cipher.CipherError as exc:
            self._discard(arts)
            return {"status": "unplannable", "reason": f"cannot protect: {type(exc).__name__}",
                    "plan": plan}
        except OSError as exc:
            self._discard(arts)
            return {"status": "oserror", "errno": exc.errno or 0,
                    "strerror": exc.strerror or type(exc).__name__}
        return {"status": "protected", "plan": plan, "sha256": source_sha, "artifacts": arts}

    def _dicom_kind(self, path: str, image_check: bool) -> str:
        """``image`` (complete DICOM with pixels), ``other``, or ``incomplete``.

        Without ``image_check`` (every destination takes file mode, the plan does not
        depend on it) a complete DICOM file is ``other``: the full parse is skipped.
        """
        from agent import dicomcheck

        try:
            with open(path, "rb") as raw:
                if not dicomcheck.is_dicom(raw):
                    return "other"
                size = os.fstat(raw.fileno()).st_size
                raw.seek(0)
                fh: BinaryIO = io.BytesIO(raw.read()) if size <= _WALK_IN_MEMORY_MAX else raw
                try:
                    dicomcheck.check_complete(fh)
                except dicomcheck.Truncated:
                    return "incomplete"
                if not image_check:
                    return "other"
                fh.seek(0)
                return "image" if self._cipher.is_dicom_with_pixels(fh) else "other"
        except OSError:
            return "other"

    def _protect(self, path: str, size: int, mtime_ns: int,
                 mode: str) -> tuple[dict[str, Any], str]:
        name = f"{secrets.token_hex(10)}.{mode}"
        tmp = self.tmp_dir / f"{name}.tmp"
        try:
            with open(path, "rb") as raw, open(tmp, "wb") as out:
                src, dst = _HashingReader(raw), _HashingWriter(out)
                info = self._cipher.protect(cast(BinaryIO, src), cast(BinaryIO, dst),
                                            self.recipients, mode)
                out.flush()
                os.fsync(out.fileno())
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise _Changed()
            linear = not src.seeked and src.count == size
            sha = src.hash.hexdigest() if linear else file_sha256(path)
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                raise _Orphaned()
            os.replace(tmp, self.spool_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # No fsync of the spool directory here: it forces a second file-system journal
        # commit per file and cost the burst 10-30 % of its throughput, with wide swings. The
        # copy's data is durable (fsync above) before the parent records it; if a power cut
        # loses the rename itself, the next start finds the recorded copy missing and
        # protects the plaintext again (it is never touched before every destination has
        # acknowledged), see Agent.recover.
        art = {"mode": mode, "name": name, "sha256": dst.hash.hexdigest(), "size": dst.count,
               "sop_instance_uid": getattr(info, "sop_instance_uid", None)}
        return art, sha

    def _discard(self, arts: list[dict[str, Any]]) -> None:
        for art in arts:
            (self.spool_dir / str(art["name"])).unlink(missing_ok=True)


def main() -> int:
    """The child's loop: configuration frame, then one answer per request frame."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    # Ctrl-C in a terminal and a service manager's SIGTERM reach the whole process group;
    # the parent decides when a child stops (end of its input), so the file in hand is
    # finished rather than cut off.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    setup = read_frame(stdin)
    if setup is None:
        return 0
    protector = Protector([str(r) for r in setup["recipients"]], Path(setup["spool_dir"]),
                          int(setup["parent_pid"]))
    write_frame(stdout, {"status": "ready", "pid": os.getpid()})
    while (req := read_frame(stdin)) is not None:
        try:
            answer = protector.handle(req)
        except _Orphaned:
            return 0
        except Exception as exc:  # reported, the child lives on
            answer = {"status": "error", "reason": f"{type(exc).__name__}"}
        try:
            write_frame(stdout, answer)
        except (BrokenPipeError, OSError):
            return 0
    return 0


# --------------------------------------------------------------------------- the parent


def worker_argv() -> list[str]:
    """How to start a child: the frozen ``scanfort`` binary or this interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable, WORKER_COMMAND]
    python = sys.executable
    if os.path.basename(python).lower().startswith("pythonservice"):
        # Hosted by pywin32's service runner from a source install: its executable is not
        # an interpreter; the interpreter beside the installation is.
        python = os.path.join(sys.exec_prefix, "python.exe")
    return [python, "-m", "agent.worker"]


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
                 argv: list[str] | None = None) -> None:
        self.setup = {"recipients": recipients, "spool_dir": str(spool_dir),
                      "parent_pid": os.getpid()}
        self.argv = argv or worker_argv()
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self.deadline: float | None = None
        self.last_used = time.monotonic()
        self.killed = 0
        self.started = 0

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
            raise WorkerStartFailed("protect worker did not start")
        self.started += 1
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

    def close(self) -> None:
        """Stop the child: end of its input lets it finish the current file and exit."""
        child, self._child = self._child, None
        if child is not None:
            self._reap(child, grace_s=10.0)


class WorkerPool:
    """``n`` protect workers shared by the parent's protect threads.

    There are more threads than workers, so that a worker is handed the next file while
    the thread that used it records the previous one in the journal: the children never
    wait for the parent's bookkeeping.
    """

    def __init__(self, n: int, recipients: list[str], spool_dir: Path,
                 argv: list[str] | None = None) -> None:
        self.workers = [ProtectWorker(recipients, spool_dir, argv) for _ in range(n)]
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
        return {"processes": len(self.workers), "running": len(pids), "pids": pids,
                "started": self.started, "killed": self.killed}

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

    def close(self) -> None:
        for w in self.workers:
            w.close()


if __name__ == "__main__":
    raise SystemExit(main())
