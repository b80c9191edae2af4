"""systemd side of ``scanfort service …``: plans for install, uninstall, start, stop, status.

``install`` creates the dedicated system user, writes the generated unit to
``/etc/systemd/system`` (which overrides the one the .deb ships in ``/lib/systemd/system``),
reloads systemd and enables the service. ``uninstall`` disables and removes the unit but
keeps the user, the config and the spool: unsent scans are never thrown away by an
uninstall (``apt purge`` is the explicit way to delete them).
"""

from __future__ import annotations

import pwd
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from agent.oshost.steps import Command, RemoveFile, Step, WriteFile
from agent.oshost.unit import DEFAULT_USER, UNIT_NAME, UnitSpec, render_unit

UNIT_DIR = Path("etc/systemd/system")
STATE_DIR = "/var/lib/scanfort"
NOLOGIN = "/usr/sbin/nologin"


def scanfort_argv() -> list[str]:
    """How to start this very ``scanfort``: the frozen binary, or ``python -m scanfort``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "scanfort"]


def host_argv(config_path: Path, executable: Sequence[str] | None = None) -> list[str]:
    """The service's command line (ExecStart)."""
    return [*(executable or scanfort_argv()), "service", "run-host", "--config", str(config_path)]


def unit_spec(
    config_path: Path,
    read_write_paths: Iterable[str],
    *,
    executable: Sequence[str] | None = None,
    user: str = DEFAULT_USER,
) -> UnitSpec:
    return UnitSpec(
        exec_start=tuple(host_argv(config_path, executable)),
        read_write_paths=tuple(read_write_paths),
        user=user,
        group=user,
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _systemctl(*args: str, check: bool = True, passthrough: bool = False) -> Command:
    return Command(("systemctl", *args), check=check, passthrough=passthrough)


def install_plan(
    spec: UnitSpec,
    *,
    root: Path = Path("/"),
    start: bool = True,
    user_exists: Callable[[str], bool] = _user_exists,
) -> list[Step]:
    steps: list[Step] = []
    if not user_exists(spec.user):
        # A system user with its own group, no login shell, home = StateDirectory.
        steps.append(
            Command(
                (
                    "useradd", "--system", "--user-group", "--home-dir", STATE_DIR,
                    "--no-create-home", "--shell", NOLOGIN,
                    "--comment", "ScanFort edge agent", spec.user,
                )
            )
        )
    steps.append(WriteFile(root / UNIT_DIR / UNIT_NAME, render_unit(spec), 0o644))
    steps.append(_systemctl("daemon-reload"))
    steps.append(_systemctl("enable", UNIT_NAME))
    if start:
        # restart, not start: a running service must pick up the regenerated unit.
        steps.append(_systemctl("restart", UNIT_NAME))
    return steps


def uninstall_plan(*, root: Path = Path("/")) -> list[Step]:
    return [
        _systemctl("disable", "--now", UNIT_NAME, check=False),
        RemoveFile(root / UNIT_DIR / UNIT_NAME),
        _systemctl("daemon-reload"),
    ]


def start_plan() -> list[Step]:
    return [_systemctl("start", UNIT_NAME)]


def stop_plan() -> list[Step]:
    return [_systemctl("stop", UNIT_NAME)]


def status_plan() -> list[Step]:
    # systemctl's exit code (0 running, 3 stopped, 4 unknown) becomes ours.
    return [_systemctl("status", "--no-pager", "--lines=20", UNIT_NAME, passthrough=True)]
