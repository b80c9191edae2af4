"""Central service configuration: one frozen dataclass, loaded from ``central.toml``.

The file lives in the data directory (``scanfort central init`` writes it). Command-line
flags override single keys; every problem is reported with its key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from protocol.hints import unknown_key
from protocol.wire import MAX_OBJECT_BYTES
from service.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PSEUDONYM_SECRET_NAME = "pseudonym.secret"
CONFIG_NAME = "central.toml"
DB_NAME = "central.sqlite3"
DATA_DIR_ENV = "SCANFORT_CENTRAL_DATA_DIR"


def default_data_dir() -> Path:
    """``$SCANFORT_CENTRAL_DATA_DIR`` or the platformdirs user data dir + ``central``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("scanfort", appauthor=False) / "central"


def normalize_db_url(url: str) -> str:
    """Map ``postgresql://`` / ``postgres://`` to the psycopg 3 driver SQLAlchemy needs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


OBJECT_BACKENDS = ("filesystem", "s3")
_MIN_PART = 5 * 1024**2  # S3's smallest part (all but the last)


@dataclass(frozen=True)
class ObjectsSettings:
    """``[objects]`` in ``central.toml``: where protected objects are stored.

    ``backend = "filesystem"`` (default): ``<data dir>/objects``. ``backend = "s3"``: a bucket
    of an S3-compatible store; credentials from ``access_key_id``/``secret_access_key``, from
    ``credentials_file`` (a TOML file with those two keys, relative to the data dir; keep it
    mode 0600), or else boto3's own chain (environment, instance role).
    """

    backend: str = "filesystem"
    endpoint: str = ""  # empty: AWS's own endpoint for the region
    bucket: str = ""
    region: str = ""
    prefix: str = ""  # key prefix inside the bucket, e.g. "scanfort/"
    addressing_style: str = "path"  # "path" | "virtual" | "auto"
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    credentials_file: str = ""
    multipart_threshold_bytes: int = 64 * 1024**2
    part_size_bytes: int = 16 * 1024**2
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.backend not in OBJECT_BACKENDS:
            found.append(f"objects.backend: must be one of {', '.join(OBJECT_BACKENDS)}")
        for name in ("endpoint", "bucket", "region", "prefix", "access_key_id",
                     "secret_access_key", "credentials_file", "addressing_style"):  # fmt: skip
            if not isinstance(getattr(self, name), str):
                found.append(f"objects.{name}: must be a string")
        if found:
            return found
        if self.backend == "s3":
            if not self.bucket:
                found.append("objects.bucket: required when backend = \"s3\"")
            if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
                found.append("objects.endpoint: must be an http:// or https:// URL")
            if bool(self.access_key_id) != bool(self.secret_access_key):
                found.append("objects.secret_access_key: give both keys or neither")
            if self.credentials_file and self.access_key_id:
                found.append("objects.credentials_file: give keys in the file or inline, not both")
        if self.addressing_style not in ("path", "virtual", "auto"):
            found.append("objects.addressing_style: must be path, virtual or auto")
        for name in ("multipart_threshold_bytes", "part_size_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < _MIN_PART:
                found.append(f"objects.{name}: must be an integer >= {_MIN_PART}")
        for name in ("connect_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                found.append(f"objects.{name}: must be a positive number")
        return found


_OBJECTS_KEYS = {f.name for f in dataclasses.fields(ObjectsSettings)}


@dataclass(frozen=True)
class Settings:
    """Everything the central service needs; passed explicitly, never global."""

    data_dir: Path
    db_url: str = ""  # empty: SQLite file in data_dir
    heartbeat_interval_s: float = 30.0  # told to agents at enrollment
    stale_after_s: float = 90.0  # no heartbeat for this long: stale
    offline_after_s: float = 600.0  # no heartbeat for this long: offline
    spool_growth_window_s: float = 600.0  # spool rising for this long: alert
    spool_age_alert_s: float = 3600.0  # oldest spooled item older than this: alert
    max_object_bytes: int = MAX_OBJECT_BYTES
    recipients: tuple[str, ...] = ()
    login_failure_delay_s: float = 1.0  # doubled per recent failure, capped at 8x
    login_window_s: float = 900.0  # failures count within this window
    login_lockout_after: int = 10  # failures of one account in a window: locked until unlocked
    login_address_limit: int = 100  # failures from one client address in a window: refused
    session_lifetime_s: float = 8 * 3600.0
    refresh_interval_s: float = 10.0  # dashboard auto-refresh
    enrollment_token_ttl_s: float = 7 * 24 * 3600.0
    event_retention_days: float = 30.0
    command_ttl_s: float = 24 * 3600.0  # a command no heartbeat acknowledged by then expires
    cookie_secure: bool = False  # set true behind TLS so cookies never travel in clear
    metrics_token: str = ""  # non-empty: /metrics needs "Authorization: Bearer <token>"
    objects: ObjectsSettings = field(default_factory=ObjectsSettings)

    @property
    def database_url(self) -> str:
        if self.db_url:
            return normalize_db_url(self.db_url)
        return f"sqlite:///{self.data_dir / DB_NAME}"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def pseudonym_secret_path(self) -> Path:
        """The site's pseudonymisation secret, handed to agents at enrollment (SPEC §2.5)."""
        return self.data_dir / PSEUDONYM_SECRET_NAME

    def pseudonym_secret_text(self) -> str | None:
        """The secret's one-line text form, or None when this data dir has none."""
        try:
            return self.pseudonym_secret_path.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every invalid key."""
        problems: list[str] = []
        positive = (
            "heartbeat_interval_s",
            "stale_after_s",
            "offline_after_s",
            "spool_growth_window_s",
            "spool_age_alert_s",
            "session_lifetime_s",
            "refresh_interval_s",
            "enrollment_token_ttl_s",
            "event_retention_days",
            "command_ttl_s",
            "login_window_s",
            "login_lockout_after",
            "login_address_limit",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{name}: must be a positive number")
        if (
            not isinstance(self.login_failure_delay_s, (int, float))
            or self.login_failure_delay_s < 0
        ):
            problems.append("login_failure_delay_s: must be a number >= 0")
        if not problems and self.offline_after_s <= self.stale_after_s:
            problems.append("offline_after_s: must be greater than stale_after_s")
        if (
            isinstance(self.max_object_bytes, bool)
            or not isinstance(self.max_object_bytes, int)
            or not 0 < self.max_object_bytes <= MAX_OBJECT_BYTES
        ):
            problems.append(f"max_object_bytes: must be an integer in 1..{MAX_OBJECT_BYTES}")
        if not all(isinstance(r, str) and r.strip() for r in self.recipients):
            problems.append("recipients: must be a list of non-empty strings")
        if not isinstance(self.metrics_token, str) or len(self.metrics_token) > 256:
            problems.append("metrics_token: must be a string of at most 256 characters")
        if not isinstance(self.cookie_secure, bool):
            problems.append("cookie_secure: must be true or false")
        if isinstance(self.objects, ObjectsSettings):
            problems.extend(self.objects.problems())
        else:
            problems.append("objects: must be a table")
        url = self.database_url
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            problems.append("db_url: only sqlite:/// and postgresql:// URLs are supported")
        if problems:
            raise ConfigError(problems)


_TOML_KEYS = {f.name for f in dataclasses.fields(Settings)} - {"data_dir"}


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Read ``central.toml`` from ``data_dir`` (if present), apply ``overrides``, validate.

    ``overrides`` with value ``None`` are ignored, so CLI flags can be passed through as-is.
    """
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    values: dict[str, Any] = {}
    problems: list[str] = []
    path = data_dir / CONFIG_NAME
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError([f"{path}: {exc}"]) from exc
        for key, value in raw.items():
            if key not in _TOML_KEYS:
                problems.append(f"{key}: {unknown_key(key, _TOML_KEYS)}")
            else:
                values[key] = value
    for key, value in overrides.items():
        if key not in _TOML_KEYS:
            raise TypeError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = value
    if problems:
        raise ConfigError(problems)
    if "recipients" in values:
        recips = values["recipients"]
        values["recipients"] = tuple(recips) if isinstance(recips, (list, tuple)) else recips
    if isinstance(values.get("objects"), dict):
        table = values["objects"]
        unknown = sorted(set(table) - _OBJECTS_KEYS)
        if unknown:
            raise ConfigError([f"objects.{k}: unknown key" for k in unknown])
        values["objects"] = ObjectsSettings(**table)
    elif "objects" in values and not isinstance(values["objects"], ObjectsSettings):
        raise ConfigError(["objects: must be a table ([objects])"])
    for key in ("max_object_bytes",):
        if isinstance(values.get(key), float) and values[key].is_integer():
            values[key] = int(values[key])
    try:
        settings = Settings(data_dir=data_dir, **values)
    except TypeError as exc:  # pragma: no cover - keys are checked above
        raise ConfigError([str(exc)]) from exc
    settings.validate()
    return settings


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_config(settings: Settings) -> str:
    """A commented ``central.toml`` holding every key (defaults included)."""
    lines = [
        "# ScanFort central service configuration (read by `scanfort central run`).",
        "# db_url empty = SQLite in this directory; postgresql://user@host/db for larger sites.",
    ]
    for f in dataclasses.fields(Settings):
        if f.name in ("data_dir", "objects"):
            continue
        lines.append(f"{f.name} = {_toml_value(getattr(settings, f.name))}")
    lines += [
        "",
        "# Object store: backend = \"filesystem\" (<data dir>/objects) or \"s3\" (boto3; endpoint,",
        "# bucket, region; credentials inline, in credentials_file (TOML with access_key_id and",
        "# secret_access_key, mode 0600), or from the environment / instance role).",
        "[objects]",
    ]
    for f in dataclasses.fields(ObjectsSettings):
        value = getattr(settings.objects, f.name)
        if f.name == "secret_access_key" and not value:
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
