"""The agent's configuration: one TOML file, validated at load into a frozen dataclass.

Every problem is reported with its key (``folders[0].path: …``) in one
:class:`~agent.errors.ConfigError`, so ``scanfort agent check`` can list them all at once.
Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from agent.errors import ConfigError
from protocol.hints import unknown_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP_NAME = "scanfort"
DESTINATION_KINDS = ("central", "dicomweb", "dicom", "folder")
AFTER_ACK = ("keep", "move", "delete")
#: DICOM mode policies and profile options (``cipher.profile``'s names; the agent process
#: does not import the cipher, a test keeps the two lists equal).
DICOM_POLICIES = ("profile", "pixels-only")
DICOM_OPTIONS = ("retain-uids", "retain-long-full-dates", "retain-patient-chars",
                 "retain-device-identity", "retain-institution-identity", "clean-descriptors",
                 "retain-safe-private")
DEFAULT_DICOM_OPTIONS = ("retain-uids", "retain-long-full-dates")
#: First word of a pseudonym secret file (``cipher.pseudonym.SECRET_MARKER``).
SECRET_MARKER = "scanfort-pseudonym-secret/1"
MODES = ("file", "dicom", "auto")
#: The chaos cipher's C kernels (``cipher.chaos``; a test keeps the lists equal). The
#: default is the fastest this CPU runs; ``cipher_kernel`` pins one in the protect workers.
CIPHER_KERNELS = ("gfni-avx512", "gfni-avx2", "vaes-avx2", "aesni-avx2", "aesni-sse",
                  "neon-aes", "table")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)


def default_config_path() -> Path:
    """Site-wide config file (``/etc/xdg/scanfort/agent.toml`` on Linux)."""
    return platformdirs.site_config_path(APP_NAME) / "agent.toml"


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME)


def default_log_dir() -> Path:
    return platformdirs.user_log_path(APP_NAME)


@dataclass(frozen=True)
class FolderConfig:
    """One watched folder and where its scans go."""

    path: Path
    destinations: tuple[str, ...]
    recursive: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    polling: bool = False  # use a polling observer (network shares)
    after_ack: str = "keep"  # keep | move | delete, once every destination acknowledged
    move_to: Path | None = None
    #: Take symbolic links (only to files inside a watched folder); off by default.
    follow_symlinks: bool = False
    #: DICOM mode: ``profile`` (PS3.15 basic profile with ``dicom_options``) or
    #: ``pixels-only`` (only Pixel Data protected; every other attribute stays readable).
    dicom_policy: str = "profile"
    dicom_options: tuple[str, ...] = DEFAULT_DICOM_OPTIONS

    @property
    def key(self) -> str:
        """The folder's stable identity in the journal: its resolved path (never its
        position in the config, which an edit can change)."""
        return str(self.path)


@dataclass(frozen=True)
class DestinationConfig:
    """One place protected copies are delivered to."""

    name: str
    kind: str  # central | dicomweb | dicom | folder
    mode: str = "file"  # protection mode of the copy; always "dicom" for dicomweb and dicom
    url: str | None = None  # dicomweb: base URL of the DICOMweb service
    username: str | None = None  # dicomweb: HTTP basic auth
    password: str | None = None
    host: str | None = None  # dicom: peer address
    port: int | None = None
    ae_title: str = "ANY-SCP"  # dicom: called AE title
    calling_ae_title: str = "SCANFORT"
    path: Path | None = None  # folder: target directory (e.g. a mounted share)
    concurrency: int = 2
    timeout_s: float = 30.0
    verify_tls: bool = True


@dataclass(frozen=True)
class CentralConfig:
    """The central status service (heartbeats, events, and the ``central`` destination)."""

    url: str | None = None
    agent_id: str | None = None
    token: str | None = None
    heartbeat_interval_s: float = 30.0
    verify_tls: bool = True


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, validated; pass it explicitly, never mutate it."""

    folders: tuple[FolderConfig, ...]
    destinations: tuple[DestinationConfig, ...]
    recipients: tuple[str, ...]
    spool_dir: Path
    central: CentralConfig = field(default_factory=CentralConfig)
    workers: int = 2
    settle_s: float = 5.0
    incomplete_grace_s: float = 120.0  # a file that stays unparseable this long is quarantined
    reconcile_interval_s: float = 60.0
    disk_low_bytes: int = 1_000_000_000  # intake pauses below this much free space
    disk_high_bytes: int = 2_000_000_000  # ... and resumes above this
    retry_initial_s: float = 5.0
    retry_max_s: float = 3600.0
    log_level: str = "info"
    log_dir: Path = field(default_factory=default_log_dir)
    #: The site's pseudonymisation secret (written by ``agent enroll``): DICOM mode keys
    #: patient pseudonyms with it; without one each study is its own pseudonymous patient.
    pseudonym_secret_file: Path | None = None
    #: A label for the central's dashboard ("CT room 2"); the central's own label wins.
    name: str | None = None
    #: The chaos kernel the protect workers run (one of CIPHER_KERNELS), or None for the
    #: fastest this CPU runs; a worker refuses to start if its CPU cannot run it.
    cipher_kernel: str | None = None
    source: Path | None = None  # the file this was loaded from

    @property
    def quarantine_dir(self) -> Path:
        return self.spool_dir / "quarantine"

    @property
    def journal_path(self) -> Path:
        return self.spool_dir / "journal.sqlite3"

    def folder(self, key: str) -> FolderConfig | None:
        """The folder with this stable key, or None if it left the config."""
        for folder in self.folders:
            if folder.key == key:
                return folder
        return None

    def folder_of(self, path: str) -> FolderConfig | None:
        """The innermost configured folder containing ``path``."""
        best: FolderConfig | None = None
        for folder in self.folders:
            root = str(folder.path)
            if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and \
                    (best is None or len(root) > len(str(best.path))):
                best = folder
        return best

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        raise KeyError(name)


def parse_size(value: Any) -> int:
    """``1500000``, ``"500 MB"``, ``"2 GiB"`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower()
            base = 1024 if "i" in unit else 1000
            mult = 1 if unit in ("", "b") else base ** ("kmgt".index(unit[0]) + 1)
            return int(float(m.group(1)) * mult)
    raise ValueError("expected bytes as an integer or a string like \"2 GB\"")


class _Reader:
    """Pulls typed values out of a TOML table, collecting problems instead of raising."""

    def __init__(self, table: Mapping[str, Any], prefix: str, problems: list[str], base: Path):
        self.table, self.prefix, self.problems, self.base = table, prefix, problems, base
        self.used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self._key(key)}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                self.problem(key, "missing")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.problem(key, f"expected {names}, got {type(value).__name__}")
            return default
        return value

    def number(self, key: str, default: float, minimum: float) -> float:
        value = self.get(key, float, default)
        if value < minimum:
            self.problem(key, f"must be >= {minimum:g}")
            return default
        return float(value)

    def integer(self, key: str, default: int, minimum: int, maximum: int = 1 << 30) -> int:
        value = self.get(key, int, default)
        if not minimum <= value <= maximum:
            self.problem(key, f"must be between {minimum} and {maximum}")
            return default
        return int(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}")
            return default
        return str(value)

    def path(self, key: str, default: Path | None = None, required: bool = False) -> Path | None:
        value = self.get(key, str, None, required)
        if value is None:
            return default
        if not value.strip():
            self.problem(key, "must not be empty")
            return default
        return (self.base / os.path.expanduser(value)).resolve()

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            self.problem(key, "expected a list of non-empty strings")
            return default
        return tuple(value)

    def size(self, key: str, default: int) -> int:
        self.used.add(key)
        if key not in self.table:
            return default
        try:
            return parse_size(self.table[key])
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def finish(self) -> None:
        for key in self.table:
            if key not in self.used:
                self.problem(key, unknown_key(key, self.used))


def _url(r: _Reader, key: str, required: bool = False) -> str | None:
    value = r.get(key, str, None, required)
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        r.problem(key, "must be an http:// or https:// URL")
        return None
    return value.rstrip("/") if value else None


def _destination(name: str, table: Any, problems: list[str], base: Path) -> DestinationConfig | None:
    prefix = f"destinations.{name}."
    if not isinstance(table, dict):
        problems.append(f"destinations.{name}: expected a table")
        return None
    r = _Reader(table, prefix, problems, base)
    kind = r.choice("kind", DESTINATION_KINDS, "folder") if "kind" in table else None
    if kind is None:
        r.problem("kind", f"missing (one of {', '.join(DESTINATION_KINDS)})")
        return None
    forced_dicom = kind in ("dicomweb", "dicom")
    mode = r.choice("mode", MODES, "dicom" if forced_dicom else "file")
    if forced_dicom and mode != "dicom":
        r.problem("mode", f"a {kind} destination only accepts \"dicom\"")
    dest = DestinationConfig(
        name=name,
        kind=kind,
        mode="dicom" if forced_dicom else mode,
        url=_url(r, "url", required=kind == "dicomweb") if kind == "dicomweb" else None,
        username=r.get("username", str) if kind == "dicomweb" else None,
        password=r.get("password", str) if kind == "dicomweb" else None,
        host=r.get("host", str, None, required=kind == "dicom") if kind == "dicom" else None,
        port=r.integer("port", 104, 1, 65535) if kind == "dicom" else None,
        ae_title=r.get("ae_title", str, "ANY-SCP") if kind == "dicom" else "ANY-SCP",
        calling_ae_title=r.get("calling_ae_title", str, "SCANFORT") if kind == "dicom" else "SCANFORT",
        path=r.path("path", required=True) if kind == "folder" else None,
        concurrency=r.integer("concurrency", 1 if kind == "dicom" else 2, 1, 32),
        timeout_s=r.number("timeout_seconds", 30.0, 0.1),
        verify_tls=r.get("verify_tls", bool, True),
    )
    for key in ("ae_title", "calling_ae_title"):
        if kind == "dicom" and not 1 <= len(getattr(dest, key)) <= 16:
            r.problem(key, "must be 1 to 16 characters")
    r.finish()
    return dest


def _folder(index: int, table: Any, dest_names: set[str], problems: list[str],
            base: Path) -> FolderConfig | None:
    prefix = f"folders[{index}]."
    if not isinstance(table, dict):
        problems.append(f"folders[{index}]: expected a table")
        return None
    r = _Reader(table, prefix, problems, base)
    path = r.path("path", required=True)
    dests = r.strings("destinations")
    if not dests:
        r.problem("destinations", "list at least one destination")
    for name in dests:
        if name not in dest_names:
            r.problem("destinations", f"unknown destination {name!r}")
    after_ack = r.choice("after_ack", AFTER_ACK, "keep")
    move_to = r.path("move_to")
    if after_ack == "move" and move_to is None:
        r.problem("move_to", "required when after_ack = \"move\"")
    folder = FolderConfig(
        path=path or Path("."),
        destinations=dests,
        recursive=r.get("recursive", bool, True),
        include=r.strings("include", ("*",)),
        exclude=r.strings("exclude"),
        polling=r.get("polling", bool, False),
        after_ack=after_ack,
        move_to=move_to,
        follow_symlinks=r.get("follow_symlinks", bool, False),
        dicom_policy=r.choice("dicom_policy", DICOM_POLICIES, "profile"),
        dicom_options=r.strings("dicom_options", DEFAULT_DICOM_OPTIONS),
    )
    for option in folder.dicom_options:
        if option not in DICOM_OPTIONS:
            r.problem("dicom_options", f"unknown option {option!r} (one of: "
                      f"{', '.join(DICOM_OPTIONS)})")
    r.finish()
    return folder if path is not None else None


def _secret_file(top: _Reader) -> Path | None:
    path = top.path("pseudonym_secret_file")
    if path is None:
        return None
    try:
        first = path.read_text(encoding="ascii").split()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        top.problem("pseudonym_secret_file", f"cannot read {path}: {reason}")
        return None
    if first != [SECRET_MARKER]:
        top.problem("pseudonym_secret_file", f"{path} is not a pseudonym secret "
                    "(scanfort central init writes one; agent enroll fetches it)")
        return None
    return path


def parse_config(data: Mapping[str, Any], base: Path, source: Path | None = None) -> AgentConfig:
    """Validate a parsed TOML document; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    top = _Reader(data, "", problems, base)
    top.used.update({"folders", "destinations", "central", "disk", "retry"})

    raw_dests = data.get("destinations", {})
    destinations: list[DestinationConfig] = []
    if not isinstance(raw_dests, dict):
        problems.append("destinations: expected a table of named destinations")
        raw_dests = {}
    for name, table in raw_dests.items():
        if not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
            problems.append(f"destinations.{name}: name must be 1-64 letters, digits, - or _")
        dest = _destination(name, table, problems, base)
        if dest is not None:
            destinations.append(dest)

    raw_folders = data.get("folders", [])
    if not isinstance(raw_folders, list) or not raw_folders:
        problems.append("folders: list at least one [[folders]] table")
        raw_folders = []
    folders = [f for i, t in enumerate(raw_folders)
               if (f := _folder(i, t, set(raw_dests), problems, base)) is not None]
    seen_keys: set[str] = set()
    for i, f in enumerate(folders):
        if f.key in seen_keys:
            problems.append(f"folders[{i}].path: {f.path} is watched twice")
        seen_keys.add(f.key)

    central_r = _Reader(data.get("central", {}) or {}, "central.", problems, base)
    central = CentralConfig(
        url=_url(central_r, "url"),
        agent_id=central_r.get("agent_id", str),
        token=central_r.get("token", str),
        heartbeat_interval_s=central_r.number("heartbeat_seconds", 30.0, 1.0),
        verify_tls=central_r.get("verify_tls", bool, True),
    )
    central_r.finish()
    if any(d.kind == "central" for d in destinations) and not (central.url and central.token):
        problems.append("central: a central destination needs central.url and central.token "
                        "(run scanfort agent enroll)")

    recipients = top.strings("recipients")
    if not recipients:
        problems.append("recipients: list at least one age recipient (age1…)")
    for rcpt in recipients:
        if not re.match(r"^age1[02-9ac-hj-np-z]{58}$", rcpt):
            problems.append(f"recipients: {rcpt[:12]}… is not an age X25519 recipient")

    disk_r = _Reader(data.get("disk", {}) or {}, "disk.", problems, base)
    low = disk_r.size("low_watermark", 1_000_000_000)
    high = disk_r.size("high_watermark", max(2 * low, low + 1))
    if high < low:
        disk_r.problem("high_watermark", "must be >= disk.low_watermark")
    disk_r.finish()
    retry_r = _Reader(data.get("retry", {}) or {}, "retry.", problems, base)
    retry_initial = retry_r.number("initial_seconds", 5.0, 0.01)
    retry_max = retry_r.number("max_seconds", 3600.0, 0.01)
    retry_r.finish()

    config = AgentConfig(
        folders=tuple(folders),
        destinations=tuple(destinations),
        recipients=recipients,
        spool_dir=top.path("spool_dir", default_data_dir() / "spool") or Path("."),
        central=central,
        workers=top.integer("workers", 2, 1, 64),
        settle_s=top.number("settle_seconds", 5.0, 0.0),
        incomplete_grace_s=top.number("incomplete_grace_seconds", 120.0, 0.0),
        reconcile_interval_s=top.number("reconcile_seconds", 60.0, 0.5),
        disk_low_bytes=low,
        disk_high_bytes=high,
        retry_initial_s=retry_initial,
        retry_max_s=max(retry_max, retry_initial),
        log_level=top.choice("log_level", LOG_LEVELS, "info"),
        log_dir=top.path("log_dir", default_log_dir()) or default_log_dir(),
        pseudonym_secret_file=_secret_file(top),
        name=(top.get("name", str) or "")[:128] or None,
        cipher_kernel=(top.choice("cipher_kernel", CIPHER_KERNELS, CIPHER_KERNELS[0])
                       if "cipher_kernel" in data else None),
        source=source,
    )
    top.finish()
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    """Read and validate the TOML config at ``path`` (default: :func:`default_config_path`)."""
    file = Path(path) if path is not None else default_config_path()
    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError([f"{file}: no such config file"]) from exc
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read ({exc.strerror})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{file}: not valid TOML ({exc})"]) from exc
    return parse_config(data, file.resolve().parent, file.resolve())
