"""Logging: a rotating file in the platformdirs log dir, plus stderr in the foreground.

Messages name files by ``file_id`` only. Third-party loggers that could print paths or
DICOM attributes at debug level (watchdog, pynetdicom) are held at WARNING whatever the
configured level. Library warnings (pydicom's ``UserWarning`` quotes attribute values)
never reach stderr or a log with their text: only their category and the module that
raised them are logged (protect workers count theirs and report them the same way).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import warnings
from typing import TextIO

from agent.config import AgentConfig

LOG_FILE = "agent.log"
_QUIET = ("watchdog", "pynetdicom", "urllib3", "requests")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` without the message (it may quote a dataset's values)."""
    module = os.path.splitext(os.path.basename(filename))[0]
    logging.getLogger("agent.warnings").warning("library warning (%s in %s), text withheld",
                                                category.__name__, module)


def route_warnings() -> None:
    """Send every library warning of this process through :func:`_show_warning`."""
    warnings.showwarning = _show_warning


def setup_logging(config: AgentConfig, foreground: bool = True) -> logging.Handler | None:
    """Attach the agent's handlers to the ``agent`` logger; return the file handler."""
    route_warnings()
    root = logging.getLogger("agent")
    root.setLevel(config.log_level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    handler: logging.Handler | None = None
    try:
        config.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            config.log_dir / LOG_FILE, maxBytes=5_000_000, backupCount=5, encoding="utf-8")
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
    except OSError as exc:
        sys.stderr.write(f"scanfort: warning: cannot write logs to {config.log_dir}: "
                         f"{exc.strerror}\n")
    if foreground and not any(getattr(h, "_scanfort_stderr", False) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(_FORMAT))
        stream._scanfort_stderr = True  # type: ignore[attr-defined]
        root.addHandler(stream)
    return handler


def teardown_logging(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("agent").removeHandler(handler)
        handler.close()
