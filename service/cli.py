"""``scanfort central …``: init, run, token, revoke, user."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.errors import AlreadyInitializedError, ConfigError, NotInitializedError

PASSWORD_ENV = "SCANFORT_ADMIN_PASSWORD"


def _fail(message: str, hint: str | None = None, code: int = 1) -> int:
    sys.stderr.write(f"scanfort: error: {message}\n")
    if hint:
        sys.stderr.write(f"scanfort: hint: {hint}\n")
    return code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="central data directory (default: platformdirs user data dir)",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="database URL (default: SQLite in the data dir; or postgresql://…)",
    )


def register(subparsers: Any) -> None:
    central = subparsers.add_parser("central", help="the central status service and dashboard")
    sub = central.add_subparsers(
        dest="central_command", metavar="COMMAND", parser_class=type(central)
    )
    central.set_defaults(func=lambda _args: (central.print_help(sys.stderr), 2)[1])

    init = sub.add_parser("init", help="create the data dir, admin user and first enrollment token")
    _common(init)
    init.add_argument("--admin-user", default="admin", help="name of the first admin user")
    init.add_argument(
        "--admin-password-file",
        type=Path,
        default=None,
        help=f"read the admin password from this file (or set ${PASSWORD_ENV}; "
        "default: generate one and print it)",
    )
    init.add_argument(
        "--recipient",
        action="append",
        default=[],
        metavar="AGE_RECIPIENT",
        help="site recipient handed to agents at enrollment (repeatable)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="serve the agent API and dashboard (foreground)")
    _common(run)
    run.add_argument("--host", default="127.0.0.1", help="address to listen on")
    run.add_argument("--port", type=int, default=8600, help="port to listen on")
    run.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate (PEM)")
    run.add_argument("--ssl-keyfile", default=None, help="private key for --ssl-certfile")
    run.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                     help="an agent without heartbeat this long is stale (default: central.toml)")
    run.add_argument("--offline-after", type=float, default=None, metavar="SECONDS",
                     help="an agent without heartbeat this long is offline (default: central.toml)")
    run.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
        help="server log level"
    )
    run.set_defaults(func=_cmd_run)

    token = sub.add_parser("token", help="mint a one-time enrollment token")
    _common(token)
    token.add_argument(
        "--note", default="", help="where the token is meant to go (shown in the dashboard)"
    )
    token.add_argument(
        "--site", default="", help="site / room of the agent that will use it (default: none)"
    )
    token.add_argument("--ttl-hours", type=float, default=None, help="validity (default: settings)")
    token.add_argument("--json", action="store_true", help="print the token as JSON")
    token.set_defaults(func=_cmd_token)

    reader = sub.add_parser("reader-token", help="mint a token a reading gateway uses to GET objects")
    _common(reader)
    reader.add_argument("--note", default="", help="which gateway it is for")
    reader.set_defaults(func=_cmd_reader_token)

    revoke = sub.add_parser("revoke", help="revoke an agent's token")
    _common(revoke)
    revoke.add_argument("agent_id", help="the agent's id (ag_…, see the dashboard)")
    revoke.set_defaults(func=_cmd_revoke)

    user = sub.add_parser("user", help="dashboard users and roles (admin, operator, viewer)")
    user_sub = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=type(user))
    user.set_defaults(func=lambda _args: (user.print_help(sys.stderr), 2)[1])
    add = user_sub.add_parser("add", help="add a user (prints a generated password if none given)")
    _common(add)
    add.add_argument("username", help="login name")
    add.add_argument(
        "--role",
        default="viewer",
        choices=["admin", "operator", "viewer"],
        help="viewer reads; operator also acts on quarantine; admin also manages (default: viewer)",
    )
    add.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help=f"read the password from this file (or ${PASSWORD_ENV}; default: generate one)",
    )
    add.set_defaults(func=_cmd_user_add)
    listing = user_sub.add_parser("list", help="list users, roles and whether they are disabled")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    listing.set_defaults(func=_cmd_user_list)
    disable = user_sub.add_parser("disable", help="disable a user (ends its sessions)")
    _common(disable)
    disable.add_argument("username", help="login name")
    disable.set_defaults(func=_cmd_user_disable)
    passwd = user_sub.add_parser("passwd", help="set a user's password (re-enables a disabled user)")
    _common(passwd)
    passwd.add_argument("username", help="login name")
    passwd.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help=f"read the password from this file (or ${PASSWORD_ENV}; default: generate one)",
    )
    passwd.set_defaults(func=_cmd_user_passwd)
    unlock = user_sub.add_parser(
        "unlock", help="unlock an account locked after too many failed logins"
    )
    _common(unlock)
    unlock.add_argument("username", help="login name")
    unlock.set_defaults(func=_cmd_user_unlock)


def _load(args: argparse.Namespace, **overrides: Any) -> Any:
    from service.settings import load_settings

    settings = load_settings(args.data_dir, db_url=args.db, **overrides)
    if not settings.config_path.exists() and not args.db:
        raise NotInitializedError(f"no {settings.config_path}")
    return settings


def _admin_password(args: argparse.Namespace) -> str | None:
    if args.admin_password_file is not None:
        text = args.admin_password_file.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{args.admin_password_file} is empty")
        return text
    return os.environ.get(PASSWORD_ENV) or None


def _cmd_init(args: argparse.Namespace) -> int:
    from service.bootstrap import initialize

    try:
        password = _admin_password(args)
        result = initialize(
            args.data_dir,
            db_url=args.db,
            admin_user=args.admin_user,
            admin_password=password,
            recipients=tuple(args.recipient),
        )
    except AlreadyInitializedError as exc:
        return _fail(
            f"already initialized: {exc}",
            "mint more enrollment tokens with `scanfort central token`",
        )
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", None, 2)
    except (OSError, ValueError) as exc:
        return _fail(str(exc), "check --data-dir, --db and --admin-password-file")
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            return _fail(
                f"database: {exc}".splitlines()[0], "check that --db points at a reachable database"
            )
        raise
    info = {
        "data_dir": str(result.settings.data_dir),
        "database": _redact(result.settings.database_url),
        "admin_user": result.admin_user,
        "admin_password": result.admin_password if result.password_generated else None,
        "enrollment_token": result.enrollment_token,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"data dir:          {info['data_dir']}")
    print(f"database:          {info['database']}")
    print(f"admin user:        {result.admin_user}")
    if result.password_generated:
        print(f"admin password:    {result.admin_password}   (generated; shown once)")
    print(f"enrollment token:  {result.enrollment_token}   (one-time; shown once)")
    print(
        "next: scanfort central run   then on each workstation: "
        "scanfort agent enroll --central URL --token TOKEN"
    )
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def _cmd_run(args: argparse.Namespace) -> int:
    from service.server import serve

    try:
        settings = _load(args, stale_after_s=args.stale_after, offline_after_s=args.offline_after)
    except NotInitializedError as exc:
        return _fail(f"central not initialized ({exc})", "run `scanfort central init` first")
    except ConfigError as exc:
        return _fail(
            f"invalid configuration: {exc}", "fix the keys listed above in central.toml", 2
        )
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        return _fail("--ssl-certfile and --ssl-keyfile go together", None, 2)
    try:
        _check_store(settings)
    except NotInitializedError as exc:
        return _fail(str(exc), "run `scanfort central init` (with the same --db) first")
    scheme = "https" if args.ssl_certfile else "http"
    sys.stderr.write(f"scanfort: central dashboard on {scheme}://{args.host}:{args.port}/\n")
    serve(
        settings,
        args.host,
        args.port,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level=args.log_level,
    )
    return 0


def _check_store(settings: Any) -> None:
    from service.store import Store

    store = Store(settings.database_url)
    try:
        store.create_schema()
        store.check_initialized()
    except NotInitializedError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            raise NotInitializedError(f"database unreachable: {str(exc).splitlines()[0]}") from exc
        raise
    finally:
        store.close()


def _cmd_token(args: argparse.Namespace) -> int:
    from service.store import Store

    try:
        settings = _load(args)
    except NotInitializedError as exc:
        return _fail(f"central not initialized ({exc})", "run `scanfort central init` first")
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}", None, 2)
    ttl = args.ttl_hours * 3600 if args.ttl_hours else settings.enrollment_token_ttl_s
    if ttl <= 0:
        return _fail("--ttl-hours must be positive", None, 2)
    store = Store(settings.database_url)
    try:
        store.create_schema()
        token_id, token = store.mint_enrollment_token(ttl, args.note, args.site)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"token_id": token_id, "enrollment_token": token, "ttl_s": ttl}))
    else:
        print(token)
    return 0


def _cmd_reader_token(args: argparse.Namespace) -> int:
    from service.readers import mint_reader_token
    from service.store import Store

    try:
        settings = _load(args)
    except NotInitializedError as exc:
        return _fail(f"central not initialized ({exc})", "run `scanfort central init` first")
    store = Store(settings.database_url)
    try:
        store.create_schema()
        print(mint_reader_token(store, args.note))
    finally:
        store.close()
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from service.store import Store

    try:
        settings = _load(args)
    except NotInitializedError as exc:
        return _fail(f"central not initialized ({exc})", "run `scanfort central init` first")
    store = Store(settings.database_url)
    try:
        revoked = store.revoke_agent(args.agent_id)
    finally:
        store.close()
    if not revoked:
        return _fail(f"no active agent {args.agent_id}", "the dashboard lists agent ids")
    print(f"revoked {args.agent_id}")
    return 0


_CLI_ACTOR = "cli"  # who the audit log names for changes made with `scanfort central user`


def _open_store(args: argparse.Namespace) -> Any:
    from service.store import Store

    settings = _load(args)
    store = Store(settings.database_url)
    store.create_schema()
    return store


def _user_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    if args.password_file is not None:
        text = args.password_file.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{args.password_file} is empty")
        return text, False
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env, False
    from service.security import generate_password

    return generate_password(), True


def _user_command(args: argparse.Namespace, action: Any) -> int:
    from service.users import UserError

    try:
        store = _open_store(args)
    except NotInitializedError as exc:
        return _fail(f"central not initialized ({exc})", "run `scanfort central init` first")
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}", None, 2)
    try:
        return int(action(store))
    except UserError as exc:
        return _fail(str(exc), "`scanfort central user list` shows the users")
    except (OSError, ValueError) as exc:
        return _fail(str(exc), "check --password-file")
    finally:
        store.close()


def _cmd_user_add(args: argparse.Namespace) -> int:
    from service import users

    def action(store: Any) -> int:
        password, generated = _user_password(args)
        users.add_user(store, args.username, password, args.role, by=_CLI_ACTOR)
        print(f"added {args.username} ({args.role})")
        if generated:
            print(f"password: {password}   (generated; shown once)")
        return 0

    return _user_command(args, action)


def _cmd_user_list(args: argparse.Namespace) -> int:
    from service import users

    def action(store: Any) -> int:
        rows = users.list_users(store)
        if args.json:
            print(json.dumps([
                {"username": u.username, "role": u.role, "disabled": u.disabled_at is not None}
                for u in rows
            ]))
            return 0
        width = max([len(u.username) for u in rows] + [4])
        print(f"{'USER':<{width}}  {'ROLE':<8}  STATE")
        for u in rows:
            state = "disabled" if u.disabled_at is not None else "active"
            print(f"{u.username:<{width}}  {u.role:<8}  {state}")
        return 0

    return _user_command(args, action)


def _cmd_user_disable(args: argparse.Namespace) -> int:
    from service import users

    def action(store: Any) -> int:
        users.disable_user(store, args.username, by=_CLI_ACTOR)
        print(f"disabled {args.username} (its sessions ended)")
        return 0

    return _user_command(args, action)


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    from service import users

    def action(store: Any) -> int:
        password, generated = _user_password(args)
        users.set_password(store, args.username, password, by=_CLI_ACTOR)
        print(f"password of {args.username} changed (its sessions ended)")
        if generated:
            print(f"password: {password}   (generated; shown once)")
        return 0

    return _user_command(args, action)


def _cmd_user_unlock(args: argparse.Namespace) -> int:
    from service import throttle, users

    def action(store: Any) -> int:
        if not throttle.unlock(store, args.username):
            print(f"{args.username} was not locked")
            return 0
        users.audit(store, _CLI_ACTOR, "user.unlock", args.username)
        print(f"unlocked {args.username}")
        return 0

    return _user_command(args, action)
