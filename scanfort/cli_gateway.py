"""``scanfort gateway …``: init, run, user, token, reindex, export, audit."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from scanfort.progress import Progress

PASSWORD_ENV = "SCANFORT_GATEWAY_PASSWORD"


def _fail(message: str, hint: str | None = None, code: int = 1) -> int:
    sys.stderr.write(f"scanfort: error: {message}\n")
    if hint:
        sys.stderr.write(f"scanfort: hint: {hint}\n")
    return code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="gateway data directory (default: platformdirs user data dir)")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="database URL (default: SQLite in the data dir; or postgresql://…)")


def _password_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file", type=Path, default=None,
        help=f"read the password from this file (or set ${PASSWORD_ENV}; default: generate one)",
    )  # fmt: skip


def register(subparsers: Any) -> None:
    gw = subparsers.add_parser("gateway", help="the reading gateway (DICOMweb, decrypts, audits)")
    sub = gw.add_subparsers(dest="gateway_command", metavar="COMMAND", parser_class=type(gw))
    gw.set_defaults(func=lambda _args: (gw.print_help(sys.stderr), 2)[1])

    init = sub.add_parser("init", help="create the data dir, config and first admin")
    _common(init)
    init.add_argument("--identity", required=True, type=Path,
                      help="the site identity file (AGE-SECRET-KEY-1…)")
    init.add_argument("--upstream", action="append", default=[], required=True, metavar="URL",
                      help="DICOMweb root of an archive, e.g. http://pacs:8042/dicom-web")
    init.add_argument("--pseudonym-secret", type=Path, default=None,
                      help="the pseudonymisation secret file (DICOM mode v2), optional")
    init.add_argument("--admin-user", default="admin", help="name of the first admin user")
    _password_arg(init)
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="serve DICOMweb, the pages and the viewer (foreground)")
    _common(run)
    run.add_argument("--host", default="127.0.0.1", help="address to listen on")
    run.add_argument("--port", type=int, default=8700, help="port to listen on")
    run.add_argument("--viewer", default=None, metavar="DIR", help="OHIF dist/ to serve")
    run.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this certificate")
    run.add_argument("--ssl-keyfile", default=None, help="private key for --ssl-certfile")
    run.add_argument("--log-level", default="info", help="server log level",
                     choices=["critical", "error", "warning", "info", "debug"])
    run.set_defaults(func=_cmd_run)

    user = sub.add_parser("user", help="add a user or change their password and roles")
    _common(user)
    user.add_argument("username", help="login name")
    user.add_argument("--role", action="append", default=[], required=True,
                      choices=["reader", "auditor", "admin"], help="repeatable")
    _password_arg(user)
    user.set_defaults(func=_cmd_user)

    token = sub.add_parser("token", help="mint a bearer token for a DICOMweb client")
    _common(token)
    token.add_argument("username", help="the user the token acts as")
    token.add_argument("--days", type=float, default=90.0, help="days until the token expires")
    token.add_argument("--note", default="", help="what the token is for (shown in listings)")
    token.set_defaults(func=_cmd_token)

    reindex = sub.add_parser("reindex", help="rebuild the search index from the upstream")
    _common(reindex)
    reindex.set_defaults(func=_cmd_reindex)

    export = sub.add_parser("export", help="push a study's decrypted instances (audited)")
    _common(export)
    export.add_argument("--study", required=True, metavar="UID",
                        help="the real Study Instance UID to export")
    export.add_argument("--to", required=True, metavar="TARGET",
                        help="dicom://AE@host:port (C-STORE) or an http(s) DICOMweb root")
    export.set_defaults(func=_cmd_export)

    audit = sub.add_parser("audit", help="verify the audit chain or export it as CSV")
    _common(audit)
    audit.add_argument("action", choices=["verify", "csv"],
                       help="verify the hash chain, or write it as CSV")
    audit.add_argument("--head", default=None, help="a hash noted earlier that must be in it")
    audit.set_defaults(func=_cmd_audit)


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from gateway.config import CONFIG_NAME, default_data_dir, load_settings
    from gateway.errors import NotInitializedError

    path = (args.data_dir or default_data_dir()).expanduser() / CONFIG_NAME
    if not path.exists():
        raise NotInitializedError(f"no {path}")
    return load_settings(args.data_dir, db_url=args.db, **overrides)


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    if args.password_file is not None:
        text = args.password_file.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{args.password_file} is empty")
        return text, False
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env, False
    from gateway.security import generate_password

    return generate_password(), True


def _cmd_init(args: argparse.Namespace) -> int:
    from cipher import keys
    from gateway.config import Settings, default_data_dir, render_config
    from gateway.errors import ConfigError
    from gateway.store import Store

    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    settings = Settings(
        data_dir=data_dir, identity_file=str(args.identity.expanduser().resolve()),
        pseudonym_secret_file=str(args.pseudonym_secret.resolve()) if args.pseudonym_secret else "",
        upstreams=tuple(args.upstream), db_url=args.db or "",
    )  # fmt: skip
    if settings.config_path.exists():
        return _fail(f"already initialized: {settings.config_path}",
                     "add users with `scanfort gateway user`")  # fmt: skip
    try:
        settings.validate()
        identities = keys.parse_identities(args.identity.read_text(encoding="utf-8"))
        if not identities:
            raise ValueError(f"{args.identity} holds no identity")
        password, generated = _password(args)
    except ConfigError as exc:
        return _fail(f"invalid setting: {exc}", None, 2)
    except (OSError, ValueError) as exc:
        return _fail(str(exc), "check --identity and --password-file")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store(settings.database_url)
    try:
        store.create_schema()
        store.set_user(args.admin_user, password, ["admin"])
    finally:
        store.close()
    settings.config_path.write_text(render_config(settings), encoding="utf-8")
    os.chmod(settings.config_path, 0o600)
    print(f"data dir:    {data_dir}")
    print(f"admin user:  {args.admin_user}")
    if generated:
        print(f"password:    {password}   (generated; shown once)")
    print("next: scanfort gateway run --viewer DIR   (make viewer installs OHIF)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError, NotInitializedError
    from gateway.server import serve

    try:
        settings = _settings(args, viewer_dir=args.viewer)
        if settings.viewer_dir and not (Path(settings.viewer_dir) / "index.html").is_file():
            return _fail(f"no index.html in {settings.viewer_dir}", "run `make viewer`", 2)
        settings.read_identities()
    except NotInitializedError as exc:
        return _fail(f"gateway not initialized ({exc})", "run `scanfort gateway init` first")
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}", "fix the keys listed in gateway.toml", 2)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        return _fail("--ssl-certfile and --ssl-keyfile go together", None, 2)
    if args.ssl_certfile and not settings.cookie_secure:
        settings = dataclasses.replace(settings, cookie_secure=True)
    scheme = "https" if args.ssl_certfile else "http"
    sys.stderr.write(f"scanfort: gateway on {scheme}://{args.host}:{args.port}/\n")
    serve(settings, args.host, args.port, ssl_certfile=args.ssl_certfile,
          ssl_keyfile=args.ssl_keyfile, log_level=args.log_level)  # fmt: skip
    return 0


def _store(args: argparse.Namespace) -> Any:
    from gateway.store import Store

    settings = _settings(args)
    store = Store(settings.database_url)
    store.create_schema()
    return settings, store


def _cmd_user(args: argparse.Namespace) -> int:
    from gateway.errors import GatewayError

    try:
        _, store = _store(args)
        password, generated = _password(args)
    except (GatewayError, OSError, ValueError) as exc:
        return _fail(str(exc), "run `scanfort gateway init` first")
    try:
        store.set_user(args.username, password, args.role)
    except ValueError as exc:
        return _fail(str(exc), None, 2)
    finally:
        store.close()
    print(f"user {args.username}: {' '.join(sorted(set(args.role)))}")
    if generated:
        print(f"password: {password}   (generated; shown once)")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from gateway.errors import GatewayError

    try:
        _, store = _store(args)
    except GatewayError as exc:
        return _fail(str(exc), "run `scanfort gateway init` first")
    try:
        if args.username not in {u for u, _ in store.list_users()}:
            return _fail(f"no user {args.username}", "add it with `scanfort gateway user`")
        print(store.create_token(args.username, args.days * 86400, "api", args.note))
    finally:
        store.close()
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    from gateway.app import create_app
    from gateway.errors import GatewayError

    try:
        settings = _settings(args)
        gw = create_app(settings).state.gateway
    except GatewayError as exc:
        return _fail(str(exc), "run `scanfort gateway init` first")
    try:
        gw.store.clear_index()
        count = gw.index.sync(force=True)
    except GatewayError as exc:
        return _fail(f"upstream: {exc}", "check the upstreams in gateway.toml")
    finally:
        gw.store.close()
    print(f"indexed {count} studies")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import getpass

    from gateway.app import create_app
    from gateway.errors import GatewayError, UpstreamNotFound
    from gateway.export import export_study

    try:
        gw = create_app(_settings(args)).state.gateway
    except GatewayError as exc:
        return _fail(str(exc), "run `scanfort gateway init` first")
    progress = Progress("gateway export", None, sys.stderr, unit="instances")

    def counted(outcome: str) -> None:
        progress.advance(failed=outcome != "sent")

    try:
        result = export_study(gw, args.study, args.to, f"cli:{getpass.getuser()}",
                              on_instance=counted)
    except UpstreamNotFound:
        return _fail(f"no study {args.study} in the archive")
    except GatewayError as exc:
        return _fail(str(exc), "check --to and the upstreams in gateway.toml")
    finally:
        progress.close()
        gw.store.close()
    print(f"sent {result.sent}, refused {result.refused}, failed {result.failed}")
    return 0 if not (result.refused or result.failed) else 1


def _cmd_audit(args: argparse.Namespace) -> int:
    from gateway import audit
    from gateway.errors import AuditChainError, GatewayError

    try:
        _, store = _store(args)
    except GatewayError as exc:
        return _fail(str(exc), "run `scanfort gateway init` first")
    try:
        if args.action == "csv":
            sys.stdout.write(audit.to_csv(store.iter_audit()))
            return 0
        entries = list(store.iter_audit())
        try:
            count = audit.verify_chain(entries, args.head)
        except AuditChainError as exc:
            return _fail(f"audit chain broken: {exc}", "restore the database from a backup")
        head = entries[-1].hash if entries else audit.GENESIS
        print(f"audit chain verified: {count} entries, head {head}")
        return 0
    finally:
        store.close()
