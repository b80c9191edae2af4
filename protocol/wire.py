"""Agent ↔ central wire format, version 1 (imported by both ``agent`` and ``service``).

Every message is a JSON object. The shapes below are the single definition both sides
use, so they cannot drift. Nothing here may carry patient-identifying data: files are
referred to by ``file_id`` (a salted SHA-256 prefix computed by the agent), never by name.

Endpoints (all under ``/api/v1``, bearer token in ``Authorization``):

- ``POST /enroll``          ``EnrollRequest`` → ``EnrollResponse`` (token: the enrollment token)
- ``POST /heartbeat``       ``Heartbeat`` → ``HeartbeatAck`` (an ``Ack`` plus pending commands)
- ``POST /events``          ``EventBatch`` → ``Ack``
- ``PUT  /objects/{sha256}`` raw protected bytes → ``ObjectReceipt`` (idempotent)
- ``HEAD /objects/{sha256}`` 200 if stored, 404 otherwise
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

PROTOCOL_VERSION = 1
API_PREFIX = "/api/v1"
MAX_OBJECT_BYTES = 2 * 1024**3  # default upload limit; the service may configure lower
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

EVENT_KINDS = frozenset(
    {
        "started",
        "stopped",
        "protected",
        "forwarded",
        "quarantined",
        "destination_paused",
        "destination_resumed",
        "intake_paused",
        "intake_resumed",
        "watcher_overflow",
        "error",
    }
)
SEVERITIES = frozenset({"info", "warning", "error"})
#: What an operator may ask an agent to do with a quarantined item (``Command.kind``):
#: ``retry`` sends it to its destination again; ``release`` gives up on that destination
#: for the item (the agent drops its spooled copy for it; the plaintext rules still apply).
COMMAND_KINDS = frozenset({"retry", "release"})
STUDY_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_QUARANTINE_ITEMS = 200
MAX_COMMANDS = 50
HEARTBEAT_STATES = frozenset({"running", "stopped"})

T = TypeVar("T")


class ProtocolError(ValueError):
    """A message does not have the version-1 shape."""


def _from_dict(cls: type[T], data: Any) -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and basic types."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__}: expected a JSON object")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = data[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{cls.__name__}: missing field {f.name!r}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}") from exc
    validate = getattr(obj, "_validate", None)
    if validate is not None:
        validate()
    return obj


def _check_number(name: str, value: Any, minimum: float = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ProtocolError(f"{name} must be a number >= {minimum}")


def _check_str(name: str, value: Any, max_len: int = 256, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > max_len:
        raise ProtocolError(f"{name} must be a string of at most {max_len} characters")


@dataclass(frozen=True)
class EnrollRequest:
    host: str
    os: str
    version: str

    def _validate(self) -> None:
        for name in ("host", "os", "version"):
            _check_str(name, getattr(self, name))

    @classmethod
    def from_dict(cls, data: Any) -> EnrollRequest:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class EnrollResponse:
    agent_id: str
    agent_token: str
    recipients: list[str]
    heartbeat_interval_s: float = 30.0
    #: The site's pseudonymisation secret (``cipher.pseudonym`` text form), when the
    #: central has one: DICOM mode keys patient pseudonyms with it.
    pseudonym_secret: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> EnrollResponse:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DestinationStatus:
    name: str
    kind: str  # central | dicomweb | dicom | folder
    pending: int = 0
    paused: bool = False
    last_success: float | None = None  # unix time
    last_error: str | None = None  # short text, never a file name or patient attribute
    last_error_at: float | None = None
    #: The peer's own words for the last failure (e.g. the reason in a STOW-RS or C-STORE
    #: response), cut to 512 characters; never a file name or patient attribute.
    peer_reason: str | None = None
    #: How many watched folders route to this destination; 0 means configured but unused.
    folders: int | None = None

    def _validate(self) -> None:
        _check_str("destination.name", self.name, 64)
        _check_str("destination.kind", self.kind, 16)
        _check_number("destination.pending", self.pending)
        _check_str("destination.last_error", self.last_error, 512, optional=True)
        _check_str("destination.peer_reason", self.peer_reason, 512, optional=True)
        if self.folders is not None:
            _check_number("destination.folders", self.folders)


@dataclass(frozen=True)
class QuarantineItem:
    """One spooled item an agent has given up sending to one destination."""

    item_id: str  # the agent's id for the spooled item (e.g. its file_id), never a name
    destination: str
    since: float  # unix time (agent clock) it was quarantined
    reason: str = ""  # the peer's reason or the agent's, short, no patient attributes
    attempts: int = 0

    def _validate(self) -> None:
        _check_str("quarantine.item_id", self.item_id, 64)
        _check_str("quarantine.destination", self.destination, 64)
        _check_number("quarantine.since", self.since)
        _check_str("quarantine.reason", self.reason, 512)
        _check_number("quarantine.attempts", self.attempts)


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a command, reported in a later heartbeat."""

    command_id: str
    ok: bool
    message: str = ""

    def _validate(self) -> None:
        _check_str("command_result.command_id", self.command_id, 64)
        if not isinstance(self.ok, bool):
            raise ProtocolError("command_result.ok must be a boolean")
        _check_str("command_result.message", self.message, 512)


@dataclass(frozen=True)
class Command:
    """An operator's request for one agent, returned in heartbeat responses until acked."""

    command_id: str
    kind: str  # one of COMMAND_KINDS
    item_id: str
    destination: str
    issued_at: float  # unix time (central clock)


@dataclass(frozen=True)
class Heartbeat:
    agent_id: str
    version: str
    host: str
    os: str
    uptime_s: float
    sent_at: float  # unix time on the agent
    watched_folders: int = 0
    spool_depth: int = 0
    spool_bytes: int = 0
    oldest_item_age_s: float | None = None
    intake_paused: bool = False
    free_disk_bytes: int | None = None
    counters: dict[str, int] = field(default_factory=dict)  # seen, protected, forwarded, quarantined, retries
    destinations: list[DestinationStatus] = field(default_factory=list)
    watcher: dict[str, int] = field(default_factory=dict)  # reconcile_finds, overflows, observers_alive, thread_failures
    protocol: int = PROTOCOL_VERSION
    #: The agent's label from ``name`` in its config (shown when no label was set centrally).
    name: str | None = None
    #: Items in quarantine right now (at most MAX_QUARANTINE_ITEMS, oldest first).
    quarantine: list[QuarantineItem] = field(default_factory=list)
    #: Ids of commands received from the central (so it stops resending them).
    command_acks: list[str] = field(default_factory=list)
    #: Outcomes of commands carried out since the last accepted heartbeat.
    command_results: list[CommandResult] = field(default_factory=list)
    #: ``running``, or ``stopped`` in the last heartbeat of a clean stop (the central then
    #: shows the agent as stopped, not offline). Older agents omit it.
    state: str = "running"

    def _validate(self) -> None:
        for name in ("agent_id", "version", "host", "os"):
            _check_str(name, getattr(self, name))
        for name in ("uptime_s", "sent_at", "watched_folders", "spool_depth", "spool_bytes"):
            _check_number(name, getattr(self, name))
        if self.oldest_item_age_s is not None:
            _check_number("oldest_item_age_s", self.oldest_item_age_s)
        for mapping_name in ("counters", "watcher"):
            mapping = getattr(self, mapping_name)
            if not isinstance(mapping, dict) or len(mapping) > 32:
                raise ProtocolError(f"{mapping_name} must be an object of at most 32 counters")
            for key, value in mapping.items():
                _check_str(f"{mapping_name} key", key, 64)
                _check_number(f"{mapping_name}.{key}", value)
        if not isinstance(self.destinations, list) or len(self.destinations) > 64:
            raise ProtocolError("destinations must be a list of at most 64 entries")
        _check_str("name", self.name, 128, optional=True)
        for list_name, limit in (
            ("quarantine", MAX_QUARANTINE_ITEMS),
            ("command_acks", MAX_COMMANDS),
            ("command_results", MAX_COMMANDS),
        ):
            value = getattr(self, list_name)
            if not isinstance(value, list) or len(value) > limit:
                raise ProtocolError(f"{list_name} must be a list of at most {limit} entries")
        for ack in self.command_acks:
            _check_str("command_acks[]", ack, 64)
        if self.state not in HEARTBEAT_STATES:
            raise ProtocolError(f"state must be one of {', '.join(sorted(HEARTBEAT_STATES))}")

    @classmethod
    def from_dict(cls, data: Any) -> Heartbeat:
        hb = _from_dict(cls, data)
        dests = [
            d if isinstance(d, DestinationStatus) else _from_dict(DestinationStatus, d)
            for d in hb.destinations
        ]
        quarantine = [
            q if isinstance(q, QuarantineItem) else _from_dict(QuarantineItem, q)
            for q in hb.quarantine
        ]
        results = [
            r if isinstance(r, CommandResult) else _from_dict(CommandResult, r)
            for r in hb.command_results
        ]
        return dataclasses.replace(
            hb, destinations=dests, quarantine=quarantine, command_results=results
        )


@dataclass(frozen=True)
class Event:
    event_id: str  # uuid4 hex, for de-duplication of resent batches
    at: float  # unix time
    kind: str
    severity: str = "info"
    message: str = ""  # short, no file names, no patient attributes
    file_id: str | None = None  # salted hash of the source file, never its name
    destination: str | None = None
    #: Keyed hashes (``study_key`` of the site pseudonymisation secret, lowercase hex) of
    #: the study's AccessionNumber and StudyInstanceUID, on protected/forwarded events:
    #: the central can answer "did this exam arrive?" without learning the identifiers.
    study_keys: list[str] = field(default_factory=list)

    def _validate(self) -> None:
        if not isinstance(self.study_keys, list) or len(self.study_keys) > 4:
            raise ProtocolError("study_keys must be a list of at most 4 keyed hashes")
        for key in self.study_keys:
            if not isinstance(key, str) or not STUDY_KEY_RE.match(key):
                raise ProtocolError("study_keys[] must be 64 lowercase hex digits")
        _check_str("event_id", self.event_id, 64)
        _check_number("at", self.at)
        if self.kind not in EVENT_KINDS:
            raise ProtocolError(f"unknown event kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ProtocolError(f"unknown severity {self.severity!r}")
        _check_str("message", self.message, 512)
        _check_str("file_id", self.file_id, 64, optional=True)
        _check_str("destination", self.destination, 64, optional=True)


@dataclass(frozen=True)
class EventBatch:
    agent_id: str
    events: list[Event]

    @classmethod
    def from_dict(cls, data: Any) -> EventBatch:
        batch = _from_dict(cls, data)
        if not isinstance(batch.events, list) or len(batch.events) > 1000:
            raise ProtocolError("events must be a list of at most 1000 entries")
        events = [e if isinstance(e, Event) else _from_dict(Event, e) for e in batch.events]
        return dataclasses.replace(batch, events=events)


@dataclass(frozen=True)
class ObjectReceipt:
    sha256: str
    size: int
    created: bool  # False when the object was already stored (idempotent re-upload)


@dataclass(frozen=True)
class Ack:
    ok: bool = True
    server_time: float | None = None


@dataclass(frozen=True)
class HeartbeatAck:
    """The heartbeat response: an ``Ack`` plus commands the agent has not acknowledged."""

    ok: bool = True
    server_time: float | None = None
    commands: list[Command] = field(default_factory=list)


_FIELDS: dict[type, tuple[str, ...]] = {}


def to_dict(message: Any) -> dict[str, Any]:
    """JSON-ready dict of any message above (what ``dataclasses.asdict`` gives, faster:
    the messages hold only JSON values, so nothing needs a deep copy)."""
    names = _FIELDS.get(type(message))
    if names is None:
        names = _FIELDS[type(message)] = tuple(f.name for f in dataclasses.fields(message))
    return {name: _plain(getattr(message, name)) for name in names}


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)

