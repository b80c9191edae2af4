"""age v1 X25519 identities and recipients (the site's keys).

Keys are plain strings in the age encoding (``AGE-SECRET-KEY-1…`` and ``age1…``) so a
site can create them with ``age-keygen`` as well as ``scanfort keygen``. All the
cryptography is done by pyrage (the Rust age implementation); this module only
validates, converts and parses identity-file text. No paths: callers read files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyrage import x25519

from cipher.errors import InvalidIdentityError, InvalidRecipientError

__all__ = [
    "generate_identity",
    "parse_identities",
    "parse_identity",
    "parse_recipient",
    "parse_recipients",
    "recipient_of",
]

_IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
_RECIPIENT_PREFIX = "age1"


def generate_identity() -> tuple[str, str]:
    """Return a fresh ``(identity, recipient)`` pair as age strings."""
    identity = x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def parse_identity(s: str) -> x25519.Identity:
    """Parse one ``AGE-SECRET-KEY-1…`` string; raise :class:`InvalidIdentityError`.

    The message never echoes the input: it may be a secret key with a typo.
    """
    text = s.strip()
    if not text.upper().startswith(_IDENTITY_PREFIX):
        raise InvalidIdentityError("not an age identity (expected AGE-SECRET-KEY-1…)")
    try:
        return x25519.Identity.from_str(text)
    except Exception as exc:  # pyrage raises its own IdentityError
        raise InvalidIdentityError("malformed age identity") from exc


def parse_recipient(s: str) -> x25519.Recipient:
    """Parse one ``age1…`` recipient; raise :class:`InvalidRecipientError`."""
    text = s.strip()
    if not text.startswith(_RECIPIENT_PREFIX):
        raise InvalidRecipientError(f"not an age recipient (expected age1…): {text[:80]!r}")
    try:
        return x25519.Recipient.from_str(text)
    except Exception as exc:  # pyrage raises its own RecipientError
        raise InvalidRecipientError(f"malformed age recipient: {text[:80]!r}") from exc


def parse_recipients(recipients: Iterable[str]) -> list[x25519.Recipient]:
    """Parse and de-duplicate recipients; at least one is required."""
    seen: dict[str, x25519.Recipient] = {}
    for r in recipients:
        parsed = parse_recipient(r)
        seen.setdefault(str(parsed), parsed)
    if not seen:
        raise InvalidRecipientError("at least one recipient is required")
    return list(seen.values())


def recipient_of(identity: str) -> str:
    """Return the ``age1…`` recipient of an identity string."""
    return str(parse_identity(identity).to_public())


def parse_identities(text: str) -> list[str]:
    """Return the identity strings of an age identity file's text.

    The format is age's: one identity per line, ``#`` comments and blank lines ignored.
    Raise :class:`InvalidIdentityError` if a line is not an identity or none is found.
    """
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            parse_identity(stripped)
        except InvalidIdentityError as exc:
            raise InvalidIdentityError(f"line {number}: {exc}") from None
        found.append(stripped)
    if not found:
        raise InvalidIdentityError("no identity found")
    return found


def _parse_identity_list(identities: Sequence[str]) -> list[x25519.Identity]:
    """Parse identities for decryption; at least one is required."""
    parsed = [parse_identity(i) for i in identities]
    if not parsed:
        raise InvalidIdentityError("at least one identity is required")
    return parsed
