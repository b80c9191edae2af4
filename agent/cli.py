"""``scanfort agent init|check|run|status|enroll|quarantine``."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import platform
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from agent import cli_quarantine
from agent.config import (
    AgentConfig,
    default_config_path,
    default_data_dir,
    load_config,
)
from agent.errors import ConfigError
from agent.oshost.unit import DEFAULT_USER
from agent.template import TEMPLATE
from protocol import __version__
from protocol.durable import atomic_write
from protocol.wire import API_PREFIX, EnrollRequest, EnrollResponse, ProtocolError, to_dict


def _error(message: str, hint: str | None = None) -> int:
    sys.stderr.write(f"scanfort: error: {message}\n")
    if hint:
        sys.stderr.write(f"scanfort: hint: {hint}\n")
    return 1


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else default_config_path()


def _load(args: argparse.Namespace) -> AgentConfig | None:
    try:
        return load_config(_config_path(args))
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"scanfort: error: {problem}\n")
        path = _config_path(args)
        if not path.exists():
            hint = (f"scanfort agent init writes {path} (or give --config FILE); "
                    "scanfort agent enroll connects it to the central")
        else:
            hint = f"fix {path} and run scanfort agent check"
        sys.stderr.write(f"scanfort: hint: {hint}\n")
        return None


def _write_private(path: Path, text: str) -> None:
    """Write atomically; a new file gets mode 0600 (it may hold the agent token), an
    existing one keeps its owner, group and mode (``root:scanfort 0640`` of a packaged
    install must stay readable by the service user)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, mode=0o600)


def _access_warnings(config: AgentConfig, user: str) -> list[tuple[str, str]]:
    """What the service user could not do with this config: (warning, hint) pairs.

    ``agent check`` usually runs as root, which reads everything; the service does not.
    Judged from owner, group and mode bits (ACLs are not read).
    """
    if os.name != "posix":
        return []
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return []
    if pw.pw_uid in (0, os.getuid()):
        return []  # root reads everything; as that user, loading the config proved it
    groups = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allowed(path: Path, want: int) -> bool:
        try:
            st = path.stat()
        except OSError:
            return True  # missing: reported elsewhere (the agent creates its folders)
        if st.st_uid == pw.pw_uid:
            bits = st.st_mode >> 6
        elif st.st_gid in groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def reach(path: Path) -> Path | None:
        """The first directory above ``path`` the user cannot enter."""
        for parent in reversed(path.parents):
            if not allowed(parent, 1):
                return parent
        return None

    out: list[tuple[str, str]] = []
    checks: list[tuple[Path, int, str]] = []
    if config.source is not None:
        checks.append((config.source, 4, "read"))
    checks += [(f.path, 5, "read the watched folder") for f in config.folders]
    spool = config.spool_dir if config.spool_dir.exists() else config.spool_dir.parent
    checks.append((spool, 3, "write the spool"))
    for path, want, what in checks:
        blocked = reach(path)
        if blocked is not None:
            out.append((f"the service user {user} cannot reach {path} ({blocked} is closed "
                        "to it)", f"chmod o+x {blocked}, or chgrp {user} it"))
        elif not allowed(path, want):
            verb = what if what != "read" else "read"
            fix = (f"chgrp {user} {path} && chmod g+r {path}" if want == 4 else
                   f"chgrp {user} {path} && chmod g+{'rx' if want == 5 else 'wx'} {path}")
            out.append((f"the service user {user} cannot {verb} {path}", fix))
    return out


def _template(recipients: list[str]) -> str:
    base = default_data_dir()
    return TEMPLATE.format(recipients=", ".join(json.dumps(r) for r in recipients),
                           spool_dir=base / "spool", inbox=base / "inbox",
                           outbox=base / "outbox")


def cmd_init(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path.exists() and not args.force:
        return _error(f"{path} already exists", "use --force to overwrite it")
    try:
        _write_private(path, _template(args.recipient or []))
    except OSError as exc:
        return _error(f"cannot write {path}: {exc.strerror}",
                      "pass --config PATH to write it somewhere else")
    print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    warnings = _access_warnings(config, args.service_user)
    for warning, hint in warnings:
        sys.stderr.write(f"scanfort: warning: {warning}\nscanfort: hint: {hint}\n")
    print(f"{config.source}: ok ({len(config.folders)} folder(s), "
          f"{len(config.destinations)} destination(s), {len(config.recipients)} recipient(s))"
          + (f", {len(warnings)} warning(s)" if warnings else ""))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    return cli_quarantine.run(config, args)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    from agent.runner import run

    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    if hasattr(signal, "SIGUSR1"):  # thread dump on demand, for a stuck agent
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("agent").addHandler(stream)
    try:
        run(config, stop, on_ready=lambda: print("scanfort agent: watching", flush=True))
    except Exception as exc:  # startup failures (journal, folders) end the run cleanly
        return _error(f"agent stopped: {exc}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    status_file = config.spool_dir / "status.json"
    try:
        doc: dict[str, Any] = json.loads(status_file.read_text())
    except (OSError, ValueError):
        doc = {}
    states: dict[str, int] = {}
    if config.journal_path.exists():
        try:
            db = sqlite3.connect(f"file:{config.journal_path}?mode=ro", uri=True, timeout=5)
            states = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
            db.close()
        except sqlite3.Error as exc:
            return _error(f"cannot read the journal: {exc}")
    if args.json:
        print(json.dumps({"status": doc, "states": states}, indent=1))
        return 0
    now = time.time()
    age = now - float(doc.get("sent_at", 0))
    stopped = doc.get("state") == "stopped"
    running = bool(doc) and age < 10 and not stopped
    print(f"agent:        {'running' if running else 'stopped' if stopped else 'not running'}"
          + (f" (status {age:.0f}s old)" if doc else ""))
    print(f"spool:        {doc.get('spool_depth', 0)} item(s), {doc.get('spool_bytes', 0)} bytes")
    print(f"intake:       {'PAUSED (disk below low watermark)' if doc.get('intake_paused') else 'ok'}")
    print("journal:      " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "empty"))
    workers = doc.get("workers")
    if isinstance(workers, dict) and running:
        print(f"workers:      {workers.get('running', 0)} of {workers.get('processes', 0)} "
              f"protect worker(s) running, {workers.get('started', 0)} started, "
              f"{workers.get('killed', 0)} killed past their deadline")
    elif isinstance(workers, dict):
        print("workers:      none running (the agent is not running)")
    failures = doc.get("thread_failures") or {}
    if failures:
        print("threads:      " + ", ".join(f"{k} failed {v}x" for k, v in sorted(failures.items()))
              + f" (restarted {doc.get('thread_restarts', 0)})")
    for d in doc.get("destinations", []):
        err_at, ok_at = d.get("last_error_at"), d.get("last_success")
        failing = err_at is not None and (ok_at is None or err_at > ok_at)
        state = ("PAUSED" if d.get("paused") else
                 f"FAILING since {now - err_at:.0f}s" if failing else "ok")
        err = f", last error: {d['last_error']}" if d.get("last_error") else ""
        print(f"destination:  {d['name']} ({d['kind']}) {state}, {d.get('pending', 0)} pending{err}")
    counters = doc.get("counters", {})
    if counters:
        print("counters:     " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return 0


def _set_key(text: str, table: str, key: str, value: str) -> str:
    """Set ``key = value`` inside ``[table]`` (replacing a commented-out line if any)."""
    header = re.search(rf"(?m)^\[{re.escape(table)}\]\s*$", text)
    line = f"{key} = {value}"
    if header is None:
        return text.rstrip("\n") + f"\n\n[{table}]\n{line}\n"
    nxt = re.search(r"(?m)^\[", text[header.end():])
    end = header.end() + (nxt.start() if nxt else len(text) - header.end())
    body = text[header.end():end]
    pattern = rf"(?m)^[ \t]*#?[ \t]*{re.escape(key)}[ \t]*=.*$"
    if re.search(pattern, body):
        body = re.sub(pattern, lambda _: line, body, count=1)
    else:
        body = f"\n{line}" + body
    return text[:header.end()] + body + text[end:]


def _set_recipients(text: str, recipients: list[str]) -> str:
    line = "recipients = [" + ", ".join(json.dumps(r) for r in recipients) + "]"
    pattern = r"(?ms)^recipients[ \t]*=[ \t]*\[.*?\]"
    if re.search(pattern, text):
        return re.sub(pattern, lambda _: line, text, count=1)
    return line + "\n" + text


def cmd_enroll(args: argparse.Namespace) -> int:
    path = _config_path(args)
    url = args.central.rstrip("/")
    request = EnrollRequest(host=socket.gethostname()[:256],
                            os=f"{platform.system()} {platform.release()}"[:256],
                            version=__version__)
    try:
        resp = requests.post(f"{url}{API_PREFIX}/enroll", json=to_dict(request), timeout=30,
                             headers={"Authorization": f"Bearer {args.token}"})
    except requests.RequestException as exc:
        return _error(f"cannot reach {url}: {type(exc).__name__}",
                      "check the URL and that the central service is running")
    if resp.status_code in (401, 403):
        return _error("the central service refused the enrollment token",
                      "enrollment tokens are single-use; ask for a new one")
    if resp.status_code != 200:
        return _error(f"enrollment failed: HTTP {resp.status_code}")
    try:
        answer = EnrollResponse.from_dict(resp.json())
    except (ValueError, ProtocolError) as exc:
        return _error(f"unexpected enrollment answer: {exc}")
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else _template([])
        text = _set_recipients(text, list(answer.recipients))
        for key, value in (("url", url), ("agent_id", answer.agent_id),
                           ("token", answer.agent_token)):
            text = _set_key(text, "central", key, json.dumps(value))
        text = _set_key(text, "central", "heartbeat_seconds",
                        repr(float(answer.heartbeat_interval_s)))
        if answer.pseudonym_secret:
            text = _set_top_key(text, "pseudonym_secret_file", json.dumps(SECRET_NAME))
        _write_private(path, text)
        if answer.pseudonym_secret:
            _write_secret_beside(path, path.parent / SECRET_NAME, answer.pseudonym_secret)
    except OSError as exc:
        return _error(f"cannot write {path}: {exc.strerror}")
    secret_note = "" if answer.pseudonym_secret else (
        " (the central has no pseudonym secret: DICOM mode makes each study its own "
        "pseudonymous patient)")
    print(f"enrolled as {answer.agent_id}; wrote {path}{secret_note}")
    return 0


#: Where ``agent enroll`` keeps the site's pseudonymisation secret, beside the config.
SECRET_NAME = "pseudonym.secret"


def _set_top_key(text: str, key: str, value: str) -> str:
    """Set a top-level ``key = value`` (before the first table; replaces an existing one)."""
    line = f"{key} = {value}"
    first_table = re.search(r"(?m)^\[", text)
    top_end = first_table.start() if first_table else len(text)
    pattern = rf"(?m)^[ \t]*#?[ \t]*{re.escape(key)}[ \t]*=.*$"
    match = re.search(pattern, text[:top_end])
    if match:
        return text[:match.start()] + line + text[match.end():]
    return text[:top_end].rstrip("\n") + f"\n{line}\n\n" + text[top_end:]


def _write_secret_beside(config: Path, target: Path, secret: str) -> None:
    """Write the secret with the config's owner and group and at most its mode (0640 of a
    packaged install: readable by the service user, by nobody else)."""
    st = config.stat()
    atomic_write(target, secret.strip() + "\n", mode=st.st_mode & 0o640)
    if os.name == "posix" and os.getuid() == 0:
        os.chown(target, st.st_uid, st.st_gid)
    os.chmod(target, st.st_mode & 0o640)


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser("agent", help="the edge agent (watch, protect, forward)")
    sub = agent.add_subparsers(dest="agent_command", metavar="SUBCOMMAND",
                               parser_class=type(agent))
    agent.set_defaults(func=lambda args: (agent.print_help(sys.stderr), 2)[1])

    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--config", metavar="PATH",
                       help=f"config file (default {default_config_path()})")
        p.set_defaults(func=func)
        return p

    p = add("init", "write a commented config template", cmd_init)
    p.add_argument("-r", "--recipient", action="append", help="age recipient (repeatable)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p = add("check", "validate the config and report every problem", cmd_check)
    p.add_argument("--service-user", default=DEFAULT_USER, metavar="USER",
                   help=f"warn about what this user cannot read or write (default {DEFAULT_USER})")
    add("run", "run the agent in the foreground", cmd_run)
    p = add("status", "print the local state (works while the agent runs)", cmd_status)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("enroll", "enroll with the central service and write the config", cmd_enroll)
    p.add_argument("--central", required=True, metavar="URL", help="central service URL")
    p.add_argument("--token", required=True, help="one-time enrollment token")
    cli_quarantine.register(sub, lambda name, help_text, _func: add(name, help_text,
                                                                    cmd_quarantine))
