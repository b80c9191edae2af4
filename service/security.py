"""Secrets: bearer tokens, admin passwords, session and CSRF tokens.

Tokens are 256-bit random strings; the database holds only their SHA-256. A fast hash is
enough for tokens (they cannot be guessed, so there is nothing to brute-force), while the
admin password, chosen by a human, gets scrypt with a per-user salt.
"""

from __future__ import annotations

import hmac
import secrets

# One implementation for the central and the gateway (a stdlib leaf), re-exported here.
from protocol.credentials import (
    generate_password,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)

__all__ = [
    "AGENT_TOKEN_PREFIX",
    "ENROLLMENT_TOKEN_PREFIX",
    "SESSION_TOKEN_PREFIX",
    "generate_password",
    "hash_password",
    "new_id",
    "new_token",
    "token_hash",
    "tokens_equal",
    "verify_password",
]


AGENT_TOKEN_PREFIX = "sfa_"
ENROLLMENT_TOKEN_PREFIX = "sfe_"
SESSION_TOKEN_PREFIX = "sfs_"


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def tokens_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
