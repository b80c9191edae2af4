"""Windows side of ``scanfort service …``: paths and ``sc.exe`` plans, testable anywhere.

Everything here is pure string work so it runs under the Linux tests; only
:mod:`agent.oshost.winservice` imports pywin32. The service is registered with
``sc.exe`` (always present on Windows) rather than through pywin32 calls so that the
exact commands are visible in ``--dry-run`` and in the tests.
"""

from __future__ import annotations

import ntpath
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.oshost.steps import Command, Step

SERVICE_NAME = "ScanFort"
DISPLAY_NAME = "ScanFort edge agent"
DESCRIPTION = "Encrypts new scans before they leave this workstation and forwards them."
APP_DIR_NAME = "scanfort"  # same app name as agent.config.APP_NAME (platformdirs)
INSTALL_DIR_NAME = "ScanFort"
EXE_NAME = "scanfort.exe"

# Recovery: restart after 5 s, again after 5 s, then after 60 s; the failure count resets
# after a day without failures.
FAILURE_RESET_SECONDS = 86_400
FAILURE_ACTIONS = "restart/5000/restart/5000/restart/60000"
# The SCM gives a service this long between STOP_PENDING and STOPPED (issue: within 10 s).
STOP_WAIT_HINT_MS = 10_000
SERVICE_ACCOUNT = f"NT SERVICE\\{SERVICE_NAME}"  # a virtual service account
EVENTLOG_KEY = "HKLM\\SYSTEM\\CurrentControlSet\\Services\\EventLog\\Application\\" + SERVICE_NAME


@dataclass(frozen=True)
class WindowsLayout:
    """Where things live on a Windows machine."""

    install_dir: str  # C:\Program Files\ScanFort (the bundle, from the installer)
    data_dir: str  # C:\ProgramData\scanfort (config, spool, logs)

    @property
    def exe(self) -> str:
        return ntpath.join(self.install_dir, EXE_NAME)

    @property
    def config_path(self) -> str:
        return ntpath.join(self.data_dir, "agent.toml")

    @property
    def spool_dir(self) -> str:
        return ntpath.join(self.data_dir, "spool")

    @property
    def log_dir(self) -> str:
        return ntpath.join(self.data_dir, "Logs")


def layout(environ: Mapping[str, str], site_data_dir: str | None = None) -> WindowsLayout:
    """The layout from the environment of a Windows process.

    ``site_data_dir`` is platformdirs' ``site_data_dir("scanfort", appauthor=False)``
    (``%ProgramData%\\scanfort``) when running on Windows; it is recomputed from
    ``%ProgramData%`` otherwise so the tests can check the result on Linux.
    """
    program_files = environ.get("ProgramW6432") or environ.get("ProgramFiles") or "C:\\Program Files"
    if site_data_dir is None:
        program_data = environ.get("ProgramData") or environ.get("ALLUSERSPROFILE") or "C:\\ProgramData"
        site_data_dir = ntpath.join(program_data, APP_DIR_NAME)
    return WindowsLayout(
        install_dir=ntpath.normpath(ntpath.join(program_files, INSTALL_DIR_NAME)),
        data_dir=ntpath.normpath(site_data_dir),
    )


def binary_path(exe: str, config_path: str) -> str:
    """The service's command line as the SCM stores it (one string, Windows quoting)."""
    return subprocess.list2cmdline([exe, "service", "run-host", "--config", config_path])


def _sc(*args: str, check: bool = True, passthrough: bool = False) -> Command:
    return Command(("sc.exe", *args), check=check, passthrough=passthrough)


def grant_command(path: str) -> Command:
    """Modify rights for the service account on ``path`` and everything below it."""
    return Command(("icacls.exe", path, "/grant", f"{SERVICE_ACCOUNT}:(OI)(CI)M", "/T", "/Q"))


def install_plan(
    exe: str,
    config_path: str,
    message_file: str,
    writable_paths: Sequence[str] = (),
    *,
    start: bool = True,
) -> list[Step]:
    """Register the service, its recovery actions, its Event Log source and its rights.

    The service runs as its own virtual account (``NT SERVICE\\ScanFort``, no password,
    no logon rights), the Windows counterpart of the dedicated system user on Linux; it
    is granted write access to exactly the folders the config names (the data folder
    with spool and logs, the watched folders, ``folder`` destinations).

    ``message_file`` is pywin32's ``servicemanager`` module inside the bundle: it holds the
    message table the Event Viewer needs to render our entries.
    """
    data_dir = ntpath.dirname(config_path)
    grants = [grant_command(p) for p in dict.fromkeys([data_dir, *writable_paths])]
    steps: list[Step] = [
        # sc.exe wants "key=" and the value as two separate arguments.
        _sc("create", SERVICE_NAME, "binPath=", binary_path(exe, config_path),
            "start=", "delayed-auto", "obj=", SERVICE_ACCOUNT, "DisplayName=", DISPLAY_NAME),
        _sc("description", SERVICE_NAME, DESCRIPTION),
        _sc("failure", SERVICE_NAME, "reset=", str(FAILURE_RESET_SECONDS),
            "actions=", FAILURE_ACTIONS),
        # Also run the recovery actions when the service stops itself with an error code
        # (our host reports SERVICE_STOPPED with a non-zero exit code on a crash).
        _sc("failureflag", SERVICE_NAME, "1"),
        Command(("reg.exe", "add", EVENTLOG_KEY, "/v", "EventMessageFile", "/t",
                 "REG_EXPAND_SZ", "/d", message_file, "/f")),
        Command(("reg.exe", "add", EVENTLOG_KEY, "/v", "TypesSupported", "/t",
                 "REG_DWORD", "/d", "7", "/f")),
        *grants,
    ]
    if start:
        steps.append(_sc("start", SERVICE_NAME))
    return steps


def uninstall_plan() -> list[Step]:
    # The spool and the config in ProgramData are kept: unsent scans are never deleted.
    return [
        _sc("stop", SERVICE_NAME, check=False),
        _sc("delete", SERVICE_NAME),
        Command(("reg.exe", "delete", EVENTLOG_KEY, "/f"), check=False),
    ]


def start_plan() -> list[Step]:
    return [_sc("start", SERVICE_NAME)]


def stop_plan() -> list[Step]:
    return [_sc("stop", SERVICE_NAME)]


def status_plan() -> list[Step]:
    return [_sc("query", SERVICE_NAME, passthrough=True)]

