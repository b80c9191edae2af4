"""Gateway configuration: one frozen dataclass, loaded from ``gateway.toml``.

Same conventions as the agent and the central service: the file lives in the data directory
(``scanfort gateway init`` writes it), command-line flags override single keys, and every
problem is reported with its key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from gateway.errors import ConfigError
from protocol.hints import unknown_key

if TYPE_CHECKING:
    from cipher.pseudonym import PseudonymSecret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "gateway.toml"
DB_NAME = "gateway.sqlite3"
DATA_DIR_ENV = "SCANFORT_GATEWAY_DATA_DIR"


def default_data_dir() -> Path:
    """``$SCANFORT_GATEWAY_DATA_DIR`` or the platformdirs user data dir + ``gateway``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("scanfort", appauthor=False) / "gateway"


def normalize_db_url(url: str) -> str:
    """Map ``postgresql://`` / ``postgres://`` to the psycopg 3 driver SQLAlchemy needs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


#: Settings that are whole numbers >= 0 (a TOML float like 1e9 is taken when whole).
_COUNTS = ("cache_bytes", "max_concurrent_restores", "stream_above_bytes", "stage_cache_bytes")


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs; passed explicitly, never global."""

    data_dir: Path
    identity_file: str = ""  # the site identity (AGE-SECRET-KEY-1…), read at start
    pseudonym_secret_file: str = ""  # optional (DICOM mode v2): search through pseudonyms
    upstreams: tuple[str, ...] = ()  # DICOMweb roots, e.g. http://pacs:8042/dicom-web
    central_token_file: str = ""  # reader token for scanfort-central+https://… upstreams
    db_url: str = ""  # empty: SQLite file in data_dir
    upstream_timeout_s: float = 30.0
    index_sync_interval_s: float = 5.0  # a search re-lists the whole upstream at most this often
    cache_bytes: int = 256 * 1024 * 1024  # decrypted instances kept in memory, never on disk
    max_concurrent_restores: int = 2  # decryptions at once (bounds memory and CPU)
    #: larger instances are streamed from the archive to the reader (never held whole,
    #: nothing decrypted of them cached; their ciphertext waits in an unlinked file)
    stream_above_bytes: int = 32 * 1024 * 1024
    #: staged ciphertext of large instances kept on disk between requests (never plaintext;
    #: 0: not kept), in ``stage_dir`` (empty: ``stage`` in the data dir; emptied at start)
    stage_cache_bytes: int = 4 * 1024**3
    stage_dir: str = ""
    login_failure_delay_s: float = 1.0  # doubled per recent failure, capped at 8x
    session_lifetime_s: float = 8 * 3600.0
    cookie_secure: bool = False  # set true behind TLS so cookies never travel in clear
    cors_origins: tuple[str, ...] = ()  # viewers on another origin allowed to call DICOMweb
    viewer_dir: str = ""  # an OHIF dist/ to serve on the same origin (empty: no viewer)
    public_url: str = ""  # e.g. https://gateway.example; empty: from the request's Host
    syslog_address: str = ""  # host:port for RFC 5424 audit messages over UDP (empty: off)

    @property
    def database_url(self) -> str:
        if self.db_url:
            return normalize_db_url(self.db_url)
        return f"sqlite:///{self.data_dir / DB_NAME}"

    @property
    def stage_path(self) -> Path:
        """Where staged ciphertext waits (``stage_dir``, relative to the data dir)."""
        if not self.stage_dir:
            return self.data_dir / "stage"
        path = Path(self.stage_dir).expanduser()
        return path if path.is_absolute() else self.data_dir / path

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    def read_identities(self) -> list[str]:
        """The site identities from ``identity_file`` (age identity file syntax)."""
        from cipher import keys

        path = Path(self.identity_file).expanduser()
        if not path.is_absolute():
            path = self.data_dir / path
        try:
            return keys.parse_identities(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"identity_file: cannot read {path}: {exc.strerror}"]) from exc
        except ValueError as exc:
            raise ConfigError([f"identity_file: {path}: {exc}"]) from exc

    def read_central_token(self) -> str:
        """The reader token for central upstreams (empty when unset)."""
        if not self.central_token_file:
            return ""
        path = Path(self.central_token_file).expanduser()
        if not path.is_absolute():
            path = self.data_dir / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError([f"central_token_file: cannot read {path}: {exc.strerror}"]) from exc

    def read_pseudonym_secret(self) -> PseudonymSecret | None:
        """The pseudonymisation secret from ``pseudonym_secret_file`` (None when unset)."""
        if not self.pseudonym_secret_file:
            return None
        from cipher.pseudonym import PseudonymSecret

        path = Path(self.pseudonym_secret_file).expanduser()
        if not path.is_absolute():
            path = self.data_dir / path
        try:
            return PseudonymSecret.parse(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"pseudonym_secret_file: cannot read {path}: {exc.strerror}"]) from exc
        except ValueError as exc:
            raise ConfigError([f"pseudonym_secret_file: {path}: {exc}"]) from exc

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every invalid key."""
        problems: list[str] = []
        for name in ("upstream_timeout_s", "session_lifetime_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{name}: must be a positive number")
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name}: must be an integer >= 0")
        if self.max_concurrent_restores == 0:
            problems.append("max_concurrent_restores: must be at least 1")
        sync = self.index_sync_interval_s
        if isinstance(sync, bool) or not isinstance(sync, (int, float)) or sync < 0:
            problems.append("index_sync_interval_s: must be a number >= 0")
        delay = self.login_failure_delay_s
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            problems.append("login_failure_delay_s: must be a number >= 0")
        if not isinstance(self.identity_file, str) or not self.identity_file.strip():
            problems.append("identity_file: required (path of the site identity)")
        if not self.upstreams:
            problems.append("upstreams: at least one DICOMweb root URL is required")
        for url in self.upstreams:
            plain = url.removeprefix("scanfort-central+") if isinstance(url, str) else url
            if not isinstance(plain, str) or not plain.startswith(("http://", "https://")):
                problems.append(f"upstreams: {url!r} is not an http(s) URL")
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not origin.startswith(("http://", "https://")):
                problems.append(f"cors_origins: {origin!r} is not an http(s) origin")
        if not isinstance(self.stage_dir, str):
            problems.append("stage_dir: must be a path (a string)")
        if not isinstance(self.cookie_secure, bool):
            problems.append("cookie_secure: must be true or false")
        if any(str(u).startswith("scanfort-central+") for u in self.upstreams) and not (
            self.central_token_file
        ):
            problems.append("central_token_file: required with a scanfort-central+ upstream")
        if self.public_url and not str(self.public_url).startswith(("http://", "https://")):
            problems.append("public_url: must be an http(s) URL")
        if self.syslog_address and ":" not in str(self.syslog_address):
            problems.append("syslog_address: must be host:port")
        url = self.database_url
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            problems.append("db_url: only sqlite:/// and postgresql:// URLs are supported")
        if problems:
            raise ConfigError(problems)


_TOML_KEYS = {f.name for f in dataclasses.fields(Settings)} - {"data_dir"}
_TUPLES = ("upstreams", "cors_origins")


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Read ``gateway.toml`` from ``data_dir`` (if present), apply ``overrides``, validate.

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
    for key in _TUPLES:
        if key in values:
            v = values[key]
            if isinstance(v, str):
                problems.append(f"{key}: must be a list of strings")
            elif isinstance(v, (list, tuple)):
                values[key] = tuple(v)
    for key in _COUNTS:
        if isinstance(values.get(key), float) and values[key].is_integer():
            values[key] = int(values[key])
    if problems:
        raise ConfigError(problems)
    settings = Settings(data_dir=data_dir, **values)
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
    """A commented ``gateway.toml`` holding every key (defaults included)."""
    lines = [
        "# ScanFort reading gateway configuration (read by `scanfort gateway run`).",
        "# identity_file: the site identity; keep this directory readable by the gateway only.",
        "# db_url empty = SQLite in this directory; postgresql://user@host/db for several",
        "# gateway processes behind a load balancer (one audit chain).",
    ]
    for f in dataclasses.fields(Settings):
        if f.name == "data_dir":
            continue
        lines.append(f"{f.name} = {_toml_value(getattr(settings, f.name))}")
    return "\n".join(lines) + "\n"
