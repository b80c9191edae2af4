"""QIDO-RS over the index: matching (PS3.4 C.2.2.2 as PS3.18 §8.3.4 uses it) and results.

Supported matching: single value and UID lists, ``*``/``?`` wildcards (case-insensitive
for person names, whose components also match by prefix with ``fuzzymatching=true``),
date and time ranges (``20240101-20241231``, ``-20241231``, ``20240101-``), and
ModalitiesInStudy at study level. ``limit``, ``offset`` and ``includefield`` (tags,
keywords or ``all``) apply to every level.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from gateway.index import Row

STUDY, SERIES, INSTANCE = "study", "series", "instance"
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITIES_IN_STUDY = "00080061"

LEVEL_FIELDS: dict[str, tuple[str, ...]] = {
    STUDY: (
        "00080005", "00080020", "00080030", "00080050", "00080056", "00080090", "00081030",
        "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010",
    ),
    SERIES: (
        "00080005", "00080021", "00080031", "00080060", "0008103E", "0020000D", "0020000E",
        "00200011", "00400244", "00400245",
    ),
    INSTANCE: (
        "00080005", "00080016", "00080018", "00080056", "0020000D", "0020000E", "00200013",
        "00280008", "00280010", "00280011", "00280100", "00020010",
    ),
}  # fmt: skip
_RESERVED = {"limit", "offset", "includefield", "fuzzymatching"}
_MAX_LIMIT = 10_000


class QueryError(ValueError):
    """A query parameter the gateway does not understand (answered 400)."""


def tag_of(name: str) -> str:
    """``PatientID`` or ``00100020`` → ``00100020``."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise QueryError(f"unknown attribute {name!r}")
    return f"{tag:08X}"


@dataclass
class Query:
    level: str
    filters: dict[str, str] = field(default_factory=dict)
    includefields: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False


def parse_query(level: str, params: Iterable[tuple[str, str]]) -> Query:
    q = Query(level)
    for name, value in params:
        low = name.lower()
        if low == "limit":
            q.limit = _int(name, value, 0, _MAX_LIMIT)
        elif low == "offset":
            q.offset = _int(name, value, 0, 2**31)
        elif low == "fuzzymatching":
            q.fuzzy = value.lower() == "true"
        elif low == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    q.include_all = True
                elif item:
                    q.includefields.add(tag_of(item))
        elif low not in _RESERVED:
            q.filters[tag_of(name)] = value
    return q


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be an integer") from exc
    if not lo <= n <= hi:
        raise QueryError(f"{name} must be in {lo}..{hi}")
    return n


def _values(row: Row, tag: str) -> list[Any]:
    attr = row.get(tag)
    return list(attr.get("Value") or []) if attr else []


def _text(value: Any) -> str:
    if isinstance(value, dict):  # PN
        return str(value.get("Alphabetic", ""))
    return str(value)


def _vr(tag: str) -> str:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"


def _match_range(value: str, query: str) -> bool:
    lo, _, hi = query.partition("-")
    value = value.replace(":", "")
    return (not lo or value >= lo.replace(":", "")) and (not hi or value <= hi.replace(":", ""))


def matches(row: Row, tag: str, query: str, fuzzy: bool = False) -> bool:
    """Whether one attribute of ``row`` matches one query value."""
    if query in ("", "*"):
        return True
    vr = _vr(tag)
    values = [_text(v) for v in _values(row, tag)]
    if vr == "UI":
        wanted = {v.strip() for v in re.split(r"[,\\]", query) if v.strip()}
        return any(v in wanted for v in values)
    if vr in ("DA", "TM", "DT") and "-" in query:
        return any(_match_range(v, query) for v in values)
    alternatives = [a for a in query.split("\\")] if vr == "CS" else [query]
    for value in values or [""]:
        for alt in alternatives:
            if vr == "PN":
                if fnmatch.fnmatchcase(value.upper(), alt.upper()):
                    return True
                if fuzzy and any(
                    c.startswith(alt.upper().rstrip("*")) for c in re.split(r"[\^= ]", value.upper())
                ):
                    return True
            elif "*" in alt or "?" in alt:
                if fnmatch.fnmatchcase(value, alt.replace("[", "[[]")):
                    return True
            elif value == alt:
                return True
    return False


def _pick(row: Row, tags: Iterable[str]) -> dict[str, Any]:
    # bulk data is never part of a QIDO-RS answer
    return {t: row[t] for t in tags if t in row and "BulkDataURI" not in row[t]}


def search(rows: list[Row], q: Query, retrieve_root: str) -> list[dict[str, Any]]:
    """The QIDO-RS answer at ``q.level`` for ``rows`` (instances from the index)."""
    key = {STUDY: STUDY_UID, SERIES: SERIES_UID, INSTANCE: SOP_UID}[q.level]
    groups: dict[str, list[Row]] = {}
    for row in sorted(rows, key=lambda r: (_first(r, STUDY_UID), _first(r, SERIES_UID),
                                            _num(r, "00200013"), _first(r, SOP_UID))):  # fmt: skip
        groups.setdefault(_first(row, key), []).append(row)
    out: list[dict[str, Any]] = []
    for uid, members in groups.items():
        if not uid:
            continue
        result = _level_result(q, members, retrieve_root)
        if all(_group_matches(q, members, result, tag, value) for tag, value in q.filters.items()):
            out.append(result)
    start = q.offset
    end = None if q.limit is None else start + q.limit
    return out[start:end]


def _group_matches(q: Query, members: list[Row], result: dict[str, Any], tag: str,
                   value: str) -> bool:  # fmt: skip
    if tag == MODALITIES_IN_STUDY or tag.startswith("0020120"):
        return matches(result, tag, value, q.fuzzy) if tag in result else True
    return any(matches(row, tag, value, q.fuzzy) for row in members)


def _first(row: Row, tag: str) -> str:
    values = _values(row, tag)
    return _text(values[0]) if values else ""


def _num(row: Row, tag: str) -> int:
    try:
        return int(_first(row, tag) or 0)
    except ValueError:
        return 0


def _level_result(q: Query, members: list[Row], root: str) -> dict[str, Any]:
    first = members[0]
    tags: set[str] = set(LEVEL_FIELDS[q.level]) | q.includefields | set(q.filters)
    if q.include_all:
        tags |= set(first)
    result = _pick(first, sorted(tags))
    study = _first(first, STUDY_UID)
    if q.level == STUDY:
        modalities = sorted({_first(r, "00080060") for r in members} - {""})
        result[MODALITIES_IN_STUDY] = {"vr": "CS", "Value": modalities}
        result["00201206"] = {"vr": "IS", "Value": [len({_first(r, SERIES_UID) for r in members})]}
        result["00201208"] = {"vr": "IS", "Value": [len(members)]}
        url = f"{root}/studies/{study}"
    elif q.level == SERIES:
        result["00201209"] = {"vr": "IS", "Value": [len(members)]}
        url = f"{root}/studies/{study}/series/{_first(first, SERIES_UID)}"
    else:
        url = (f"{root}/studies/{study}/series/{_first(first, SERIES_UID)}"
               f"/instances/{_first(first, SOP_UID)}")  # fmt: skip
    result["00081190"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(result.items()))
