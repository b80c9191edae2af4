"""A throw-away PostgreSQL cluster on loopback (initdb in a temp dir), for tests and bench/."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries (or a user to run them as) are not available."""


def _bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def throwaway_postgres(max_connections: int = 200) -> Iterator[str]:
    """Yield the admin URL ``postgresql://scanfort@127.0.0.1:PORT`` of a fresh cluster."""
    bindir = _bindir()
    if bindir is None:
        raise PostgresMissing("PostgreSQL server binaries not installed (Debian package postgresql)")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="sf-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(base, ignore_errors=True)
            raise PostgresMissing("running as root and no 'postgres' user to run PostgreSQL as") from exc
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = _free_port()
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "scanfort",
             "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
            check=True,
            capture_output=True,
        )
        opts = f"-h 127.0.0.1 -p {port} -k {base} -F -c max_connections={max_connections}"
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
             "-w", "-t", "60", "-o", opts, "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://scanfort@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)
