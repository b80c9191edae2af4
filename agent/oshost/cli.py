"""``scanfort service …``: install and control the agent as an OS service.

    scanfort service install|uninstall|start|stop|status [--config PATH] [--dry-run]
    scanfort service run-host --config PATH     (what systemd / the SCM start)
    scanfort service unit [--config PATH] …     (print the generated systemd unit)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.errors import ConfigError
from agent.oshost import linux, windows
from agent.oshost.errors import ServiceError
from agent.oshost.host import EXIT_CONFIG, run_systemd_host
from agent.oshost.paths import writable_paths
from agent.oshost.steps import RunCommand, Step, execute, run_command
from agent.oshost.unit import DEFAULT_USER, render_unit

ACTIONS = {
    "install": "install (or regenerate), enable and start the service",
    "uninstall": "stop and remove the service (config and spool are kept)",
    "start": "start the service",
    "stop": "stop the service (in-flight work is finished or parked)",
    "status": "show the service state",
}


def _error(message: str, hint: str | None = None, *, stderr: TextIO | None = None) -> None:
    out = stderr or sys.stderr
    out.write(f"scanfort: error: {message}\n")
    if hint:
        out.write(f"scanfort: hint: {hint}\n")


def _config_path(args: argparse.Namespace) -> Path:
    from agent.config import default_config_path

    return Path(args.config).absolute() if args.config else default_config_path()


def _load(path: Path) -> Any:
    from agent.config import load_config

    return load_config(path)


def _report_config_error(exc: ConfigError, path: Path) -> None:
    for problem in exc.problems:
        _error(problem)
    if any("cannot read" in p for p in exc.problems):
        # The service runs as its own user: a config rewritten as root:root 0600 is
        # unreadable to it (restarting cannot fix that, hence exit 78 and no restart).
        _error(f"the service user cannot read {path}",
               f"chgrp {DEFAULT_USER} {path} && chmod 0640 {path}, then start the service "
               f"again (`scanfort agent check --config {path}` warns about this)")
        return
    _error(f"invalid config {path}", f"check it with `scanfort agent check --config {path}`")


def plan(args: argparse.Namespace, platform: str = sys.platform) -> list[Step]:
    """The steps for ``args.action`` on ``platform`` (``linux`` or ``win32``)."""
    action: str = args.action
    if platform == "win32":
        if action == "install":
            from agent.oshost import winservice

            path = _config_path(args)
            exe = sys.executable  # the frozen scanfort.exe in an installed bundle
            return windows.install_plan(
                exe, str(path), winservice.message_file(),
                writable_paths(_load(path)), start=not args.no_start,
            )
        return {
            "uninstall": windows.uninstall_plan,
            "start": windows.start_plan,
            "stop": windows.stop_plan,
            "status": windows.status_plan,
        }[action]()
    if action == "install":
        path = _config_path(args)
        config = _load(path)
        spec = linux.unit_spec(path, writable_paths(config), user=args.user)
        return linux.install_plan(spec, start=not args.no_start)
    return {
        "uninstall": linux.uninstall_plan,
        "start": linux.start_plan,
        "stop": linux.stop_plan,
        "status": linux.status_plan,
    }[action]()


def cmd_action(args: argparse.Namespace, run: RunCommand = run_command) -> int:
    try:
        steps = plan(args)
        code = execute(steps, run=run, dry_run=args.dry_run)
    except ConfigError as exc:
        _report_config_error(exc, _config_path(args))
        return 1
    except ServiceError as exc:
        _error(str(exc), exc.hint)
        return 1
    except PermissionError as exc:
        _error(f"permission denied: {exc.filename}", "run as root (Administrator on Windows)")
        return 1
    if args.action == "install" and not args.dry_run and sys.platform != "win32":
        sys.stderr.write(
            f"scanfort: hint: the '{args.user}' group needs write access to every watched "
            "folder (e.g. chgrp -R scanfort DIR && chmod -R g+rwX DIR)\n"
        )
    return code


def cmd_run_host(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if sys.platform == "win32":
        from agent.oshost import winservice

        return winservice.dispatch(str(path))
    try:
        config = _load(path)
    except ConfigError as exc:
        _report_config_error(exc, path)
        return EXIT_CONFIG
    return run_systemd_host(config)


def cmd_unit(args: argparse.Namespace) -> int:
    path = _config_path(args)
    paths: list[str] = list(args.read_write or [])
    if not args.no_load:
        try:
            paths += writable_paths(_load(path))
        except ConfigError as exc:
            _report_config_error(exc, path)
            return 1
    executable: Sequence[str] | None = [args.exec] if args.exec else None
    try:
        text = render_unit(linux.unit_spec(path, paths, executable=executable, user=args.user))
    except ValueError as exc:
        _error(str(exc))
        return 2
    sys.stdout.write(text)
    return 0


def register(subparsers: Any) -> None:
    service = subparsers.add_parser(
        "service", help="install and control the agent as an OS service",
        description="Install and control the agent as a systemd unit or a Windows service.",
    )
    sub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH",
                       help="agent config (default: the site config of agent.config)")

    for action, text in ACTIONS.items():
        p = sub.add_parser(action, help=text)
        common(p)
        p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
        if action == "install":
            p.add_argument("--no-start", action="store_true", help="enable but do not start")
            p.add_argument("--user", default=DEFAULT_USER, help="service user (Linux)")
        else:
            p.set_defaults(no_start=False, user=DEFAULT_USER)
        p.set_defaults(func=cmd_action, action=action)

    p = sub.add_parser("run-host", help="run the agent under systemd or the SCM (used by the service)")
    common(p)
    p.set_defaults(func=cmd_run_host)

    p = sub.add_parser("unit", help="print the systemd unit generated from the config")
    common(p)
    p.add_argument("--exec", metavar="PATH", help="scanfort executable for ExecStart")
    p.add_argument("--read-write", metavar="PATH", action="append",
                   help="extra writable path (repeatable)")
    p.add_argument("--no-load", action="store_true",
                   help="do not read the config; use only --read-write paths")
    p.add_argument("--user", default=DEFAULT_USER, help="service user")
    p.set_defaults(func=cmd_unit)
