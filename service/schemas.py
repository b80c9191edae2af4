"""JSON Schemas of the protocol messages, derived from ``protocol.wire``, and a validator.

The dataclasses in the protocol module are the single definition of the wire format; this
module walks their fields to produce the OpenAPI component schemas and adds the limits the
protocol's ``_validate`` methods enforce (lengths, minimums, kinds). The service validates
every request body against these schemas (types exactly as documented) before building the
dataclass with ``from_dict``, so what the OpenAPI document promises is what the API accepts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from typing import Any

from protocol import wire as protocol

Schema = dict[str, Any]

# (message, field) -> extra JSON Schema keywords mirroring protocol._validate
_LIMITS: dict[tuple[str, str], Schema] = {
    ("EnrollRequest", "host"): {"maxLength": 256},
    ("EnrollRequest", "os"): {"maxLength": 256},
    ("EnrollRequest", "version"): {"maxLength": 256},
    ("DestinationStatus", "name"): {"maxLength": 64},
    ("DestinationStatus", "kind"): {"maxLength": 16},
    ("DestinationStatus", "pending"): {"minimum": 0},
    ("DestinationStatus", "last_error"): {"maxLength": 512},
    ("DestinationStatus", "peer_reason"): {"maxLength": 512},
    ("DestinationStatus", "folders"): {"minimum": 0},
    ("QuarantineItem", "item_id"): {"maxLength": 64},
    ("QuarantineItem", "destination"): {"maxLength": 64},
    ("QuarantineItem", "since"): {"minimum": 0},
    ("QuarantineItem", "reason"): {"maxLength": 512},
    ("QuarantineItem", "attempts"): {"minimum": 0},
    ("CommandResult", "command_id"): {"maxLength": 64},
    ("CommandResult", "message"): {"maxLength": 512},
    ("Command", "kind"): {"enum": sorted(protocol.COMMAND_KINDS)},
    ("Heartbeat", "agent_id"): {"maxLength": 256},
    ("Heartbeat", "version"): {"maxLength": 256},
    ("Heartbeat", "host"): {"maxLength": 256},
    ("Heartbeat", "os"): {"maxLength": 256},
    ("Heartbeat", "uptime_s"): {"minimum": 0},
    ("Heartbeat", "sent_at"): {"minimum": 0},
    ("Heartbeat", "watched_folders"): {"minimum": 0},
    ("Heartbeat", "spool_depth"): {"minimum": 0},
    ("Heartbeat", "spool_bytes"): {"minimum": 0},
    ("Heartbeat", "oldest_item_age_s"): {"minimum": 0},
    ("Heartbeat", "free_disk_bytes"): {"minimum": 0},
    ("Heartbeat", "counters"): {"maxProperties": 32, "propertyNames": {"maxLength": 64}},
    ("Heartbeat", "watcher"): {"maxProperties": 32, "propertyNames": {"maxLength": 64}},
    ("Heartbeat", "counters.*"): {"minimum": 0},
    ("Heartbeat", "watcher.*"): {"minimum": 0},
    ("Heartbeat", "destinations"): {"maxItems": 64},
    ("Heartbeat", "name"): {"maxLength": 128},
    ("Heartbeat", "quarantine"): {"maxItems": protocol.MAX_QUARANTINE_ITEMS},
    ("Heartbeat", "command_acks"): {"maxItems": protocol.MAX_COMMANDS},
    ("Heartbeat", "command_acks[]"): {"maxLength": 64},
    ("Heartbeat", "command_results"): {"maxItems": protocol.MAX_COMMANDS},
    ("Event", "event_id"): {"maxLength": 64},
    ("Event", "at"): {"minimum": 0},
    ("Heartbeat", "state"): {"enum": sorted(protocol.HEARTBEAT_STATES)},
    ("Event", "kind"): {"enum": sorted(protocol.EVENT_KINDS)},
    ("Event", "severity"): {"enum": sorted(protocol.SEVERITIES)},
    ("Event", "message"): {"maxLength": 512},
    ("Event", "file_id"): {"maxLength": 64},
    ("Event", "destination"): {"maxLength": 64},
    ("Event", "study_keys"): {"maxItems": 4},
    ("Event", "study_keys[]"): {"pattern": protocol.STUDY_KEY_RE.pattern},
    ("EventBatch", "agent_id"): {"maxLength": 256},
    ("EventBatch", "events"): {"maxItems": 1000},
}

MESSAGES: tuple[type[Any], ...] = (
    protocol.EnrollRequest,
    protocol.EnrollResponse,
    protocol.DestinationStatus,
    protocol.QuarantineItem,
    protocol.CommandResult,
    protocol.Command,
    protocol.Heartbeat,
    protocol.Event,
    protocol.EventBatch,
    protocol.ObjectReceipt,
    protocol.Ack,
    protocol.HeartbeatAck,
)

ERROR_SCHEMA: Schema = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


def _type_schema(tp: Any, owner: str, name: str) -> Schema:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = _type_schema(members[0], owner, name) if len(members) == 1 else {}
        limits = _LIMITS.get((owner, name), {})
        inner.update(limits)
        return {"anyOf": [inner, {"type": "null"}]}
    schema: Schema
    if tp is str:
        schema = {"type": "string"}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer"}
    elif tp is float:
        schema = {"type": "number"}
    elif origin is list:
        schema = {"type": "array", "items": _type_schema(args[0], owner, name + "[]")}
    elif origin is dict:
        schema = {
            "type": "object",
            "additionalProperties": _type_schema(args[1], owner, name + ".*"),
        }
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    else:  # pragma: no cover - the protocol uses only the types above
        raise TypeError(f"no JSON Schema for {tp!r}")
    schema.update(_LIMITS.get((owner, name), {}))
    return schema


def message_schema(cls: type[Any]) -> Schema:
    hints = typing.get_type_hints(cls)
    properties: Schema = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        properties[f.name] = _type_schema(hints[f.name], cls.__name__, f.name)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema: Schema = {"type": "object", "title": cls.__name__, "properties": properties}
    if required:
        schema["required"] = required
    return schema


def component_schemas() -> dict[str, Schema]:
    schemas = {cls.__name__: message_schema(cls) for cls in MESSAGES}
    schemas["Error"] = ERROR_SCHEMA
    return schemas


_COMPONENTS = component_schemas()


class SchemaError(ValueError):
    """A request body does not match its schema (message says where)."""


def _fail(path: str, message: str) -> typing.NoReturn:
    raise SchemaError(f"{path or 'body'}: {message}")


def validate(instance: Any, schema: Schema, path: str = "") -> None:
    """Check ``instance`` against the subset of JSON Schema produced above."""
    if "$ref" in schema:
        schema = _COMPONENTS[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(instance, option, path)
                return
            except SchemaError as exc:
                errors.append(str(exc))
        _fail(path, " or ".join(errors))
    kind = schema.get("type")
    if kind == "null" and instance is not None:
        _fail(path, "must be null")
    if kind == "string":
        if not isinstance(instance, str):
            _fail(path, "must be a string")
        if len(instance) > schema.get("maxLength", math.inf):
            _fail(path, f"longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            _fail(path, f"does not match {schema['pattern']}")
    if kind == "boolean" and not isinstance(instance, bool):
        _fail(path, "must be a boolean")
    if kind in ("integer", "number"):
        if isinstance(instance, bool) or not isinstance(instance, (int, float)):
            _fail(path, f"must be a {kind}")
        if kind == "integer" and isinstance(instance, float) and not instance.is_integer():
            _fail(path, "must be an integer")
        if instance < schema.get("minimum", -math.inf):
            _fail(path, f"must be >= {schema['minimum']}")
    if "enum" in schema and instance not in schema["enum"]:
        _fail(path, "not one of " + ", ".join(map(str, schema["enum"])))
    if kind == "array":
        if not isinstance(instance, list):
            _fail(path, "must be an array")
        if len(instance) > schema.get("maxItems", math.inf):
            _fail(path, f"more than {schema['maxItems']} items")
        for i, item in enumerate(instance):
            validate(item, schema["items"], f"{path}[{i}]")
    if kind == "object":
        if not isinstance(instance, dict):
            _fail(path, "must be an object")
        for key in schema.get("required", ()):
            if key not in instance:
                _fail(path, f"missing {key!r}")
        if len(instance) > schema.get("maxProperties", math.inf):
            _fail(path, f"more than {schema['maxProperties']} properties")
        names = schema.get("propertyNames")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = f"{path}.{key}" if path else key
            if names is not None:
                validate(key, {"type": "string", **names}, sub)
            if key in props:
                validate(value, props[key], sub)
            elif isinstance(extra, dict):
                validate(value, extra, sub)


def _reject_constant(name: str) -> Any:
    raise SchemaError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise SchemaError("number out of range")
    return value


def parse_body(raw: bytes, message: type[Any]) -> Any:
    """Decode, validate and build the protocol ``message``; raises :class:`SchemaError`."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except SchemaError:
        raise
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"invalid JSON: {exc}") from exc
    validate(data, {"$ref": f"#/components/schemas/{message.__name__}"})
    try:
        return message.from_dict(data)
    except protocol.ProtocolError as exc:
        raise SchemaError(str(exc)) from exc
