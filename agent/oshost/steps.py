"""Install/uninstall/start/stop/status as plans of small steps, then executed.

Each platform module turns a request into a list of steps (run a command, write or
remove a file). Tests check the plans on any OS; ``--dry-run`` prints them; only
:func:`execute` touches the machine.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from agent.oshost.errors import ServiceError
from protocol.durable import atomic_write


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    check: bool = True  # a failure stops the plan
    # For status: the command's exit code becomes the CLI's.
    passthrough: bool = False

    def describe(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WriteFile:
    path: Path
    text: str
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path} (mode {self.mode:04o})"


@dataclass(frozen=True)
class RemoveFile:
    path: Path

    def describe(self) -> str:
        return f"remove {self.path}"


Step = Command | WriteFile | RemoveFile
RunCommand = Callable[[Sequence[str]], int]


def run_command(argv: Sequence[str]) -> int:
    """The real command runner: inherits stdout/stderr so the user sees tool output."""
    try:
        return subprocess.run(list(argv), check=False).returncode
    except FileNotFoundError as exc:
        raise ServiceError(f"{argv[0]} not found", hint="is this the right OS?") from exc


def execute(
    steps: Sequence[Step],
    *,
    run: RunCommand = run_command,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """Carry out ``steps`` in order; returns the exit code of a passthrough command, else 0."""
    stream = out or sys.stdout
    code = 0
    for step in steps:
        if dry_run:
            stream.write(step.describe() + "\n")
            continue
        if isinstance(step, WriteFile):
            step.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(step.path, step.text, mode=step.mode, keep_metadata=False)
        elif isinstance(step, RemoveFile):
            step.path.unlink(missing_ok=True)
        else:
            rc = run(step.argv)
            if step.passthrough:
                code = rc
            elif rc != 0 and step.check:
                raise ServiceError(f"{step.describe()} failed with exit code {rc}")
    return code
