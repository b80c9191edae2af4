"""First-time setup of a central data directory (what ``scanfort central init`` does)."""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.durable import atomic_write
from service import security
from service.errors import AlreadyInitializedError
from service.settings import Settings, default_data_dir, render_config
from service.store import Store

#: First word of the secret's text form (``cipher.pseudonym.SECRET_MARKER``).
PSEUDONYM_SECRET_MARKER = "scanfort-pseudonym-secret/1"


@dataclass(frozen=True)
class InitResult:
    settings: Settings
    admin_user: str
    admin_password: str
    password_generated: bool
    enrollment_token: str


def initialize(
    data_dir: Path | None = None,
    *,
    db_url: str | None = None,
    admin_user: str = "admin",
    admin_password: str | None = None,
    recipients: tuple[str, ...] = (),
    **settings_overrides: Any,
) -> InitResult:
    """Create the data dir, ``central.toml``, the tables, the admin user and one enrollment token.

    Refuses a directory that already has a ``central.toml`` (nothing is overwritten).
    """
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    settings = Settings(data_dir=data_dir, db_url=db_url or "", recipients=tuple(recipients))
    settings = dataclasses.replace(settings, **settings_overrides)
    settings.validate()
    if settings.config_path.exists():
        raise AlreadyInitializedError(f"{settings.config_path} already exists")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.objects_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    generated = admin_password is None
    password = admin_password if admin_password is not None else security.generate_password()
    store = Store(settings.database_url)
    try:
        store.create_schema()
        store.set_user(admin_user, password)
        _id, token = store.mint_enrollment_token(settings.enrollment_token_ttl_s, "first token")
    finally:
        store.close()
    _write_pseudonym_secret(settings.pseudonym_secret_path)
    atomic_write(settings.config_path, render_config(settings), mode=0o644)
    return InitResult(settings, admin_user, password, generated, token)


def _write_pseudonym_secret(path: Path) -> None:
    """Create the site's pseudonymisation secret (mode 0600; an existing one is kept).

    The text form is ``cipher.pseudonym``'s (SPEC §2.5); the central writes it without
    importing the cipher, and hands it to agents at enrollment.
    """
    if path.exists():
        return
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"{PSEUDONYM_SECRET_MARKER} 1 {key}\n")
        fh.flush()
        os.fsync(fh.fileno())

