"""Secrets of the gateway: passwords, session and API tokens, the index key.

Tokens are 256-bit random strings; the database holds only their SHA-256 (they cannot be
guessed, so a fast hash is enough). Passwords, chosen by humans, get scrypt with a salt.
The index of real patient attributes is sealed with AES-256-GCM under a key derived from
the site identity: whoever can read the index at rest could already decrypt the studies.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_TOKEN_PREFIX = "sfgs_"
API_TOKEN_PREFIX = "sfg_"
#: HKDF info label of the index key; a new layout of the sealed rows gets a new label.
INDEX_KEY_LABEL = b"scanfort-gateway-index/1"

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1


def new_token(prefix: str) -> str:
    """A fresh bearer token; the prefix tells a leaked token's kind at a glance."""
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database stores instead of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Constant-time check; an unknown user (``encoded`` None) costs the same scrypt."""
    if encoded is None:
        hash_password(password, salt=b"\0" * 16)
        return False
    try:
        scheme, n, r, p, salt_hex, digest_hex = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest_hex) // 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def generate_password() -> str:
    """A password for the first admin when none was given (printed once by ``init``)."""
    return secrets.token_urlsafe(15)


class IndexSeal:
    """AES-256-GCM for index rows; the row's SOP Instance UID is the associated data.

    Binding the UID means a sealed row copied onto another instance's row fails to open.
    """

    def __init__(self, identities: list[str]) -> None:
        if not identities:
            raise ValueError("no site identity to derive the index key from")
        material = "\n".join(sorted(identities)).encode("utf-8")
        key = HKDF(hashes.SHA256(), 32, salt=None, info=INDEX_KEY_LABEL).derive(material)
        self._aead = AESGCM(key)

    def seal(self, uid: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, uid.encode("ascii", "replace"))

    def open(self, uid: str, sealed: bytes) -> bytes:
        """Raise ``cryptography.exceptions.InvalidTag`` on any damage or a foreign key."""
        return self._aead.decrypt(sealed[:12], sealed[12:], uid.encode("ascii", "replace"))
