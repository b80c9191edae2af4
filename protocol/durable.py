"""Durable file replacement: the one atomic-write and ``fsync_dir`` helper.

Shared by the agent (spool, quarantine notes, folder destination, config rewrites), the
command line and the central service. Standard library only, no logging, no policy: a
leaf module every package may import.

Why each step: the data is written to a temporary name in the target's own directory
(a rename is only atomic within one file system), fsync'd (the rename must not reach the
disk before the bytes do), renamed over the target, and the directory fsync'd (the rename
itself is durable). A rewrite keeps the owner, group and mode of the file it replaces:
a config readable by a service group stays readable by it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames in directory ``path`` durable (a no-op where directories cannot be
    opened, e.g. on Windows, or the file system refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_metadata(target: Path, tmp: Path, fd: int, mode: int | None) -> None:
    """Give ``tmp`` the mode (and, when allowed, owner and group) of ``target``; else
    ``mode`` if given."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        if mode is not None:
            os.chmod(fd if os.name == "posix" else tmp, mode)
        return
    if os.name != "posix":  # pragma: no cover - Windows keeps ACLs through os.replace
        return
    if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        with contextlib.suppress(PermissionError):
            os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, mode: int | None = None,
                  keep_metadata: bool = True, fsync: bool = True,
                  tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yields a binary file; on a clean exit its content
    replaces ``path`` (fsync'd, renamed, directory fsync'd); on an exception ``path`` is
    untouched and the temporary file removed.

    ``mode`` applies to a new file (an existing one keeps its own mode, owner and group
    when ``keep_metadata``). ``tmp_dir`` must be on the same file system as ``path``.
    """
    target = Path(path)
    where = Path(tmp_dir) if tmp_dir is not None else target.parent
    tmp = where / f".{target.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o600 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if keep_metadata:
                _copy_metadata(target, tmp, fh.fileno(), mode)
            elif mode is not None and os.name == "posix":
                os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *, mode: int | None = None,
                 keep_metadata: bool = True, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8), see :func:`atomic_output`."""
    with atomic_output(path, mode=mode, keep_metadata=keep_metadata, fsync=fsync) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
