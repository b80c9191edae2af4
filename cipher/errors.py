"""Typed errors of the ``cipher`` package.

Every way a protected file can be damaged (truncation, a flipped byte, a swapped blob, an
unknown format version once the file has been recognised) raises the same
:class:`AuthenticationError` with the same message, so an attacker learns nothing from
which check failed (the model is pyca/cryptography's ``InvalidToken``).
"""

from __future__ import annotations

__all__ = [
    "AUTHENTICATION_FAILED",
    "AuthenticationError",
    "CipherError",
    "FormatError",
    "InvalidIdentityError",
    "InvalidRecipientError",
    "NoIdentityMatchError",
    "NotDicomError",
    "UnsupportedDicomError",
    "VerifyError",
]

#: The single message of every authentication failure.
AUTHENTICATION_FAILED = "the file is truncated, corrupted or was tampered with"


class CipherError(Exception):
    """Base class of every error raised by ``cipher``."""


class AuthenticationError(CipherError):
    """The protected input failed authentication (truncated, corrupted or tampered).

    The message is always :data:`AUTHENTICATION_FAILED`, whatever was touched.
    """

    def __init__(self) -> None:
        super().__init__(AUTHENTICATION_FAILED)


class NoIdentityMatchError(CipherError):
    """None of the given identities is a recipient of the file.

    age cannot tell a wrong identity from a damaged recipient stanza: an X25519 stanza
    that does not unwrap is, by design, "not for this identity".
    """

    def __init__(self) -> None:
        super().__init__("no identity matches this file")


class NotDicomError(CipherError):
    """DICOM mode was asked for an input that is not a DICOM file with Pixel Data."""


class UnsupportedDicomError(NotDicomError):
    """A DICOM file that DICOM mode cannot carry (empty Pixel Data, Pixel Data as SQ, a cut
    or malformed element…). The message says why; file mode still protects it."""


class VerifyError(CipherError):
    """A fresh protection did not restore to its input (verify before commit).

    Raised by :func:`cipher.protect` before anything is returned as done: the output must
    not be kept, and the input must not be deleted.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__("the protected output does not restore to its input"
                         + (f" ({detail})" if detail else ""))


class FormatError(CipherError):
    """The input is not a ScanFort protected file (neither file mode nor DICOM mode)."""


class AlreadyProtectedError(FormatError):
    """The input to protect is a ScanFort protected file already (never wrapped twice)."""


class InvalidRecipientError(CipherError, ValueError):
    """A recipient string is not an age X25519 recipient (``age1…``)."""


class InvalidIdentityError(CipherError, ValueError):
    """An identity string is not an age X25519 identity (``AGE-SECRET-KEY-1…``)."""
