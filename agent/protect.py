"""Protection in a child process: what one protect worker does (the child side).

The parent (``agent.pool``) keeps the watchers, the journal and the senders; each of its
protect workers is a child process running :func:`main`: it reads a settled file, checks
that a DICOM file is complete, protects it once per protection mode its destinations need
(the cipher verifies each copy restores to the original before it returns) and leaves the
copies in the spool (temporary file, fsync, rename; see :mod:`agent.spool`).

Wire format: frames of a 4-byte big-endian length and a UTF-8 JSON object, parent → child
on the child's stdin, child → parent on its stdout. The first frame configures the child
(recipients, spool dir); then each request frame is one file and gets one answer frame.
The child never touches the journal and never logs: library warnings (pydicom quoting
attribute values) are counted by category and reported in the answer, never printed.

Answers (``status``): ``protected`` (plan, sha256, artifacts, flags), ``vanished``,
``changed``, ``incomplete`` (a truncated DICOM file still in its grace period),
``failed`` (``permanent`` and a ``reason`` free of file names and values) and
``oserror`` (the spool volume: full or unwritable).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import struct
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from agent import crashpoints
from agent.spool import Spool

_LEN = struct.Struct(">I")
_MAX_FRAME = 16 << 20
#: DICOM files up to this size are read into memory for the completeness walk.
_WALK_IN_MEMORY_MAX = 8 << 20
#: The command word that makes the ``scanfort`` executable (frozen or not) a worker.
WORKER_COMMAND = "_protect-worker"


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


# --------------------------------------------------------------------------- planning


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
    """Wraps the source: hashes exactly the bytes the cipher consumed (``hashing``), or
    only counts them (the cipher reports their SHA-256 itself: DICOM mode)."""

    def __init__(self, fh: BinaryIO, hashing: bool = True) -> None:
        self.fh, self.count = fh, 0
        self.hash = hashlib.sha256() if hashing else None
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
        if self.hash is not None:
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


class _NotVerified(Exception):
    """The cipher did not confirm that the copy restores to the original."""


def file_sha256(path: str, follow: bool = True) -> str:
    h = hashlib.sha256()
    with _open_source(path, follow) as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _open_source(path: str, follow: bool) -> BinaryIO:
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    return os.fdopen(os.open(path, flags), "rb")


def _verified(info: Any) -> bool:
    """The cipher checked this copy restores to the original before it returned: only then
    does it count (a copy that cannot be decrypted must never let ``after_ack`` delete)."""
    return info.verified is True


class Protector:
    """What one child does for one file; also usable in-process (tests, tools)."""

    def __init__(self, recipients: list[str], spool_dir: Path,
                 parent_pid: int | None = None, kernel: str | None = None) -> None:
        import cipher  # the child's heavy imports happen here, not in the parent

        if kernel:
            from cipher import chaos

            chaos.use_kernel(kernel)  # ValueError: this CPU cannot run it
        self._cipher = cipher
        self.recipients = recipients
        self.spool = Spool(spool_dir)
        self.spool.create()
        self.parent_pid = parent_pid
        self._names: dict[str, str] = {}
        self._policy: Any = None  # the request's DICOM policy (cipher.DicomPolicy)
        self._secrets: dict[str, Any] = {}  # pseudonym secret file → PseudonymSecret

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """One request; library warnings are counted into the answer, never printed."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answer = self._handle(req)
        if caught:
            answer["warnings"] = dict(Counter(w.category.__name__ for w in caught))
        return answer

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        path, size, mtime_ns = str(req["path"]), int(req["size"]), int(req["mtime_ns"])
        follow = bool(req.get("follow_symlinks", False))
        try:
            st = os.stat(path) if follow else os.lstat(path)
        except FileNotFoundError:
            return {"status": "vanished"}
        if not follow and os.path.islink(path):
            return {"status": "failed", "permanent": True,
                    "reason": "symbolic link (follow_symlinks is off)"}
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return {"status": "changed"}
        dest_modes = [str(m) for m in req["modes"]]
        # The parent names the copies, so it can remove them if this child dies before
        # it answers; a request without names (tools, tests) gets fresh ones.
        self._names = {str(k): str(v) for k, v in (req.get("names") or {}).items()}
        if any(m in ("auto", "dicom") for m in dest_modes):
            try:
                self._policy = self._dicom_policy(req)
            except (OSError, ValueError) as exc:  # an operator can fix it: not permanent
                return {"status": "failed", "permanent": False,
                        "reason": f"DICOM policy: {type(exc).__name__}: "
                                  f"{exc.strerror if isinstance(exc, OSError) else exc}"}
        kind = self._dicom_kind(path, follow, any(m in ("auto", "dicom") for m in dest_modes))
        flags: list[str] = []
        if kind == "incomplete":
            if not req.get("accept_truncated"):
                return {"status": "incomplete"}
            # Past its grace period a truncated file is still protected, in file mode,
            # for every destination that takes file mode; the others are quarantined.
            flags.append("truncated")
        plan = plan_modes(dest_modes, kind == "image")
        try:
            arts, source_sha, plan = self._protect_plan(path, size, mtime_ns, follow, plan,
                                                        dest_modes, flags)
        except _Changed:
            return {"status": "changed"}
        except FileNotFoundError:
            return {"status": "vanished"}
        except _NotVerified:
            return {"status": "failed", "permanent": False,
                    "reason": "protected copy did not verify against the original"}
        except self._cipher.CipherError as exc:
            # Same input, same error (cipher v2 contract): permanent.
            return {"status": "failed", "permanent": True,
                    "reason": f"cannot protect: {type(exc).__name__}"}
        except OSError as exc:
            return {"status": "oserror", "errno": exc.errno or 0,
                    "strerror": exc.strerror or type(exc).__name__}
        dicom_file = kind != "other" or "not-carried-by-dicom-mode" in flags
        if not any(plan):
            reason = ("not a dicom image: no destination of this folder accepts other files"
                      if not dicom_file else "dicom mode cannot carry this file"
                      + (" (truncated)" if "truncated" in flags else "")
                      + " and no destination of this folder accepts file mode")
            return {"status": "failed", "permanent": True, "reason": reason, "plan": plan}
        return {"status": "protected", "plan": plan, "sha256": source_sha, "artifacts": arts,
                "flags": flags, "dicom_file": dicom_file}

    def _protect_plan(self, path: str, size: int, mtime_ns: int, follow: bool,
                      plan: list[str | None], dest_modes: list[str],
                      flags: list[str]) -> tuple[list[dict[str, Any]], str | None,
                                                 list[str | None]]:
        arts: list[dict[str, Any]] = []
        source_sha: str | None = None
        try:
            for mode in ("dicom", "file"):
                if mode not in plan:
                    continue
                try:
                    art, sha = self._protect(path, size, mtime_ns, mode, follow)
                except self._cipher.NotDicomError:
                    if mode != "dicom":
                        raise
                    # DICOM mode refuses this file (e.g. no usable Pixel Data): ``auto``
                    # destinations get file mode, ``dicom`` ones cannot take it.
                    flags.append("not-carried-by-dicom-mode")
                    plan = plan_modes(dest_modes, False)
                    continue
                arts.append(art)
                if source_sha is not None and sha != source_sha:
                    raise _Changed()
                source_sha = sha
        except BaseException:
            self.spool.discard(str(a["name"]) for a in arts)
            raise
        return arts, source_sha, plan

    def _dicom_policy(self, req: dict[str, Any]) -> Any:
        """The folder's DICOM policy, keyed with the site's pseudonymisation secret."""
        from cipher.pseudonym import PseudonymSecret

        secret = None
        secret_file = req.get("pseudonym_secret_file")
        if secret_file:
            secret = self._secrets.get(str(secret_file))
            if secret is None:
                secret = PseudonymSecret.parse(Path(str(secret_file)).read_text("ascii"))
                self._secrets[str(secret_file)] = secret
        return self._cipher.DicomPolicy.from_names(
            str(req.get("dicom_policy", "profile")),
            [str(o) for o in req.get("dicom_options", ("retain-uids", "retain-long-full-dates"))],
            secret)

    def _dicom_kind(self, path: str, follow: bool, image_check: bool) -> str:
        """``image`` (complete DICOM with pixels), ``other``, or ``incomplete``.

        Without ``image_check`` (every destination takes file mode, the plan does not
        depend on it) a complete DICOM file is ``other``: the full parse is skipped.
        """
        from agent import dicomcheck

        try:
            with _open_source(path, follow) as raw:
                if not dicomcheck.is_dicom(raw):
                    return "other"
                size = os.fstat(raw.fileno()).st_size
                raw.seek(0)
                fh: BinaryIO = io.BytesIO(raw.read()) if size <= _WALK_IN_MEMORY_MAX else raw
                try:
                    walked = dicomcheck.check_complete(fh)
                except dicomcheck.Truncated:
                    return "incomplete"
                if not image_check:
                    return "other"
                # The walk saw the top-level tags: no pydicom parse just to decide (DICOM
                # mode parses the file itself, and hands a file it cannot take back to
                # file mode). Only a deflated data set, which the walk skips, is parsed.
                image = walked.image
                if image is None:
                    fh.seek(0)
                    image = self._cipher.is_dicom_with_pixels(fh)
                return "image" if image else "other"
        except OSError:
            return "other"

    def _protect(self, path: str, size: int, mtime_ns: int, mode: str,
                 follow: bool) -> tuple[dict[str, Any], str]:
        name = self._names.get(mode) or self.spool.new_name(mode)
        tmp = self.spool.tmp_for(name)
        try:
            with _open_source(path, follow) as raw, open(tmp, "wb") as out:
                # DICOM mode hashes the source for its blob and reports that digest
                src, dst = _HashingReader(raw, hashing=mode != "dicom"), _HashingWriter(out)
                info = self._cipher.protect(cast(BinaryIO, src), cast(BinaryIO, dst),
                                            self.recipients, mode,
                                            policy=self._policy if mode == "dicom" else None)
                if not _verified(info):
                    raise _NotVerified()
                out.flush()
                os.fsync(out.fileno())
            st = os.stat(path) if follow else os.lstat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise _Changed()
            sha = _source_sha256(src, info, size) or file_sha256(path, follow)
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                raise _Orphaned()
            # DICOM mode: the UIDs as the copy stores them, read by the cipher's verify
            stored = getattr(info, "stored_uids", None)
            uids = list(stored) if stored is not None else None
            crashpoints.reached("protect.before_rename")
            self.spool.commit(tmp, name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        art = {"mode": mode, "name": name, "sha256": dst.hash.hexdigest(), "size": dst.count,
               "sop_instance_uid": getattr(info, "sop_instance_uid", None),
               "study_keys": list(getattr(info, "study_keys", ())), "uids": uids}
        return art, sha


def _source_sha256(src: _HashingReader, info: Any, size: int) -> str | None:
    """The SHA-256 of the source as the cipher read it, when it read it front to back
    and whole (else None: the caller hashes the file)."""
    if src.seeked or src.count != size:
        return None
    if src.hash is not None:
        return src.hash.hexdigest()
    reported = getattr(info, "source_sha256", None)
    return str(reported) if reported and info.bytes_in == size else None


def main() -> int:
    """The child's loop: configuration frame, then one answer per request frame."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe
    # Nothing from a dataset may reach a log: warnings outside a request are dropped too.
    warnings.simplefilter("ignore")
    # Ctrl-C in a terminal and a service manager's SIGTERM reach the whole process group;
    # the parent decides when a child stops (end of its input), so the file in hand is
    # finished rather than cut off.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    setup = read_frame(stdin)
    if setup is None:
        return 0
    from agent import workerproc

    workerproc.skip_unused_imports()  # before the cipher and pydicom are imported
    workerproc.tune_heap()
    try:
        protector = Protector([str(r) for r in setup["recipients"]], Path(setup["spool_dir"]),
                              int(setup["parent_pid"]), setup.get("kernel"))
    except ValueError as exc:  # the configured cipher kernel: the parent reports why
        write_frame(stdout, {"status": "error", "reason": str(exc)})
        return 1
    from cipher import chaos

    if chaos.kernel() == chaos.REFERENCE:  # no C kernel here: the reference needs numpy
        workerproc.allow_numpy()
    write_frame(stdout, {"status": "ready", "pid": os.getpid(), "kernel": chaos.kernel()})
    trim, served = _malloc_trim(), 0
    while (req := read_frame(stdin)) is not None:
        try:
            answer = protector.handle(req)
        except _Orphaned:
            return 0
        except Exception as exc:  # reported, the child lives on
            answer = {"status": "failed", "permanent": False, "reason": type(exc).__name__}
        if answer.get("status") == "protected":
            crashpoints.reached("protect.after_rename")
        try:
            write_frame(stdout, answer)
        except (BrokenPipeError, OSError):
            return 0
        served += 1
        if trim is not None and served % TRIM_EVERY == 0:
            trim(0)
    return 0


#: Every this many files a worker gives the C heap's free pages back to the system.
TRIM_EVERY = 8


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None elsewhere. The worker's heap keeps the pages of a
    protection's buffers for the next file (``workerproc.tune_heap``); every
    :data:`TRIM_EVERY` files the free ones go back to the system, so that a large file
    does not leave its memory with the worker. The next file then faults its pages in
    again: about 80 page faults per file on average for 512×512×16-bit slices."""
    from cipher import heap

    return heap.trimmer()


if __name__ == "__main__":
    raise SystemExit(main())
