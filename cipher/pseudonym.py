"""Keyed pseudonyms: stable, distinct, irreversible stand-ins for patient identifiers.

DICOM mode replaces PatientID, IssuerOfPatientID, OtherPatientIDs, PatientName and
AccessionNumber by pseudonyms so that a PACS keeps patients apart (one pseudonymous
patient per real patient) without learning who they are. A pseudonym is
``HMAC-SHA256(key, label || kind || issuer || value)`` truncated and written in base32,
prefixed by the secret's version (``SF1-…``) so a rotated secret never yields a
pseudonym that collides with one of the previous version. ``cipher/SPEC.md`` §2.5 says
why this construction and what a holder of the secret can do (patient identifiers have
little entropy: whoever holds the secret can test guesses).

The secret is text so that callers can keep it in a file beside the agent config; this
module never reads paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SECRET_MARKER", "PseudonymSecret", "study_pseudonym"]

#: First word of the secret's text form.
SECRET_MARKER = "scanfort-pseudonym-secret/1"
KEY_SIZE = 32
_LABEL = b"scanfort pseudonym v1"
_TEXT_RE = re.compile(r"scanfort-pseudonym-secret/1 ([1-9][0-9]{0,5}) ([A-Za-z0-9_-]{43}=?)")


def _b32(digest: bytes) -> str:
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def _norm(value: str) -> bytes:
    # DICOM pads values with spaces (and some writers with NULs): "ID1 " and "ID1" are
    # one patient.
    return value.strip(" \x00").encode("utf-8")


@dataclass(frozen=True)
class PseudonymSecret:
    """A site's pseudonymisation secret: a version number and 32 random bytes."""

    version: int
    key: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.version <= 999_999:
            raise ValueError("pseudonym secret version must be in 1..999999")
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"pseudonym secret key must be {KEY_SIZE} bytes")

    def __repr__(self) -> str:  # never print the key
        return f"PseudonymSecret(version={self.version})"

    @classmethod
    def generate(
        cls, version: int = 1, randbytes: Callable[[int], bytes] = os.urandom
    ) -> PseudonymSecret:
        """A fresh secret from the OS CSPRNG."""
        return cls(version, randbytes(KEY_SIZE))

    @classmethod
    def parse(cls, text: str) -> PseudonymSecret:
        """Parse the text form (blank lines and ``#`` comments allowed around it)."""
        lines = [ln.strip() for ln in text.splitlines()]
        body = [ln for ln in lines if ln and not ln.startswith("#")]
        if len(body) != 1 or not (m := _TEXT_RE.fullmatch(body[0])):
            raise ValueError(f"not a pseudonym secret (expected one line '{SECRET_MARKER} "
                             "VERSION KEY')")
        key = base64.urlsafe_b64decode(m.group(2).rstrip("=") + "=")
        return cls(int(m.group(1)), key)

    def encode(self) -> str:
        """The text form: one line, ``scanfort-pseudonym-secret/1 VERSION KEY``."""
        key = base64.urlsafe_b64encode(self.key).decode("ascii")
        return f"{SECRET_MARKER} {self.version} {key}\n"

    def _mac(self, kind: bytes, value: str, issuer: str = "") -> bytes:
        msg = b"\x00".join((_LABEL, kind, _norm(issuer), _norm(value)))
        return hmac.new(self.key, msg, hashlib.sha256).digest()

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """LO pseudonym of (PatientID, IssuerOfPatientID): ``SF<v>-`` + 26 base32 (130 bits)."""
        return f"SF{self.version}-{_b32(self._mac(b'patient-id', patient_id, issuer))[:26]}"

    def patient_name(self, patient_id: str, issuer: str = "") -> str:
        """PN pseudonym of a patient, derived from the patient's identity (not the name)."""
        code = _b32(self._mac(b"patient-name", patient_id, issuer))[:16]
        return f"SF{self.version}^{code}"

    def issuer(self, issuer: str) -> str:
        """LO pseudonym of an IssuerOfPatientID."""
        return f"SF{self.version}-I{_b32(self._mac(b'issuer', issuer))[:16]}"

    def accession(self, accession: str, issuer: str = "") -> str:
        """SH pseudonym (at most 16 characters) of an AccessionNumber (about 70 bits)."""
        prefix = f"A{self.version}"
        return prefix + _b32(self._mac(b"accession", accession, issuer))[: 16 - len(prefix)]

    def uid(self, uid: str) -> str:
        """A UID (``2.25.`` form, 128 bits) standing for ``uid``: the same input, the same UID."""
        return "2.25." + str(int.from_bytes(self._mac(b"uid", uid)[:16], "big"))

    def study_key(self, value: str) -> str:
        """Keyed hash (hex) of a study identifier, for reports to the central service."""
        return self._mac(b"study-key", value).hex()


def study_pseudonym(study_instance_uid: str) -> str:
    """The patient pseudonym used without a secret: one pseudonymous patient per study.

    Patients never merge (every study is its own patient) but one patient's studies are
    not linked. It is derived from the Study Instance UID, which stays visible anyway, so
    it reveals nothing new.
    """
    digest = hashlib.sha256(_LABEL + b"\x00study\x00" + _norm(study_instance_uid)).digest()
    return f"SF0-{_b32(digest)[:26]}"
