"""Bearer tokens and scrypt password hashes, shared by the central service and the gateway.

Stdlib only (a leaf both may import). A hash is ``scrypt$N$r$p$salt$digest`` (hex);
verification is constant time, and an unknown user costs the same scrypt as a known one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["generate_password", "hash_password", "new_token", "token_hash",
           "verify_password"]

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
