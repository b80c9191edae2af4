"""The Windows service: a thin pywin32 shell around :func:`agent.oshost.host.host_in_thread`.

Kept deliberately small because it can only run on Windows; everything it relies on
(command lines, paths, the threaded host with its stop deadline) lives in modules the
Linux tests cover. The SCM starts ``scanfort.exe service run-host --config …``; the CLI
then calls :func:`dispatch`, which hands the process to the service control dispatcher.

Status sequence: START_PENDING at once, RUNNING when the agent watches its folders,
STOP_PENDING with a 10 s wait hint on a stop request, STOPPED. A failure of the loop ends
:meth:`ScanFortService.SvcRun` with an exception, which pywin32 reports as STOPPED with
an error code, so the recovery actions (``sc failure`` … ``failureflag 1``) restart it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from agent.oshost import windows
from agent.oshost.host import Outcome, default_runner, describe, host_in_thread

try:  # pywin32 exists only on Windows; importing this module elsewhere must not fail.
    import servicemanager
    import win32service
    import win32serviceutil
except ImportError:  # pragma: no cover - exercised on Windows only
    AVAILABLE = False
else:  # pragma: no cover - exercised on Windows only
    AVAILABLE = True

# ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: started from a console, not by the SCM.
_NOT_A_SERVICE = 1063
_START_WAIT_HINT_MS = 30_000


def message_file() -> str:
    """The message-table DLL for Event Log entries (pywin32's servicemanager module)."""
    return str(servicemanager.__file__)


if AVAILABLE:  # pragma: no cover - exercised on Windows only

    class _ScmReporter:
        def __init__(self, service: ScanFortService) -> None:
            self._service = service

        def ready(self) -> None:
            self._service.ReportServiceStatus(win32service.SERVICE_RUNNING)
            servicemanager.LogInfoMsg(f"{windows.SERVICE_NAME} started: watching folders")

        def tick(self) -> None:
            pass  # the SCM has no watchdog; recovery actions cover crashes

        def stopping(self) -> None:
            servicemanager.LogInfoMsg(f"{windows.SERVICE_NAME} stopping")

        def failed(self, error: BaseException) -> None:
            servicemanager.LogErrorMsg(
                f"{windows.SERVICE_NAME} agent loop failed: {describe(error)}"
            )

    class ScanFortService(win32serviceutil.ServiceFramework):
        _svc_name_ = windows.SERVICE_NAME
        _svc_display_name_ = windows.DISPLAY_NAME
        _svc_description_ = windows.DESCRIPTION
        config_path: str | None = None  # set by dispatch() before the SCM calls us

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._stop = threading.Event()

        def SvcStop(self) -> None:
            self.ReportServiceStatus(
                win32service.SERVICE_STOP_PENDING, waitHint=windows.STOP_WAIT_HINT_MS
            )
            self._stop.set()

        SvcShutdown = SvcStop

        def SvcRun(self) -> None:
            self.ReportServiceStatus(
                win32service.SERVICE_START_PENDING, waitHint=_START_WAIT_HINT_MS
            )
            from agent.config import load_config
            from agent.errors import ConfigError

            try:
                config = load_config(self.config_path)
            except ConfigError as exc:
                servicemanager.LogErrorMsg(
                    f"{windows.SERVICE_NAME}: invalid config: " + "; ".join(exc.problems)
                )
                raise
            # One second of the SCM's 10 s wait hint is left for the process to exit.
            outcome = host_in_thread(
                config, self._stop, _ScmReporter(self), default_runner(),
                stop_timeout=windows.STOP_WAIT_HINT_MS / 1000 - 1,
            )
            if outcome is Outcome.TIMEOUT:
                servicemanager.LogWarningMsg(
                    f"{windows.SERVICE_NAME}: in-flight work left to the journal at stop"
                )
            elif outcome is Outcome.FAILED:
                raise RuntimeError("agent loop failed")
            servicemanager.LogInfoMsg(f"{windows.SERVICE_NAME} stopped")


def dispatch(config_path: str) -> int:
    """Hand this process to the SCM's dispatcher (``service run-host`` on Windows)."""
    if not AVAILABLE:
        sys.stderr.write("scanfort: error: pywin32 is not available\n")
        return 1
    import pywintypes  # pragma: no cover

    ScanFortService.config_path = config_path  # pragma: no cover
    servicemanager.Initialize()  # pragma: no cover
    servicemanager.PrepareToHostSingle(ScanFortService)  # pragma: no cover
    try:  # pragma: no cover
        servicemanager.StartServiceCtrlDispatcher()
    except pywintypes.error as exc:  # pragma: no cover
        if exc.winerror == _NOT_A_SERVICE:
            sys.stderr.write(
                "scanfort: error: run-host is started by the Service Control Manager\n"
                "scanfort: hint: use `scanfort service start`, or `scanfort agent run` "
                "in the foreground\n"
            )
            return 2
        raise
    return 0
