"""Secrets of the gateway: passwords, session and API tokens, the index key.

Tokens are 256-bit random strings; the database holds only their SHA-256 (they cannot be
guessed, so a fast hash is enough). Passwords, chosen by humans, get scrypt with a salt.
The index of real patient attributes is sealed with AES-256-GCM under a key derived from
the site identity: whoever can read the index at rest could already decrypt the studies.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# One implementation for the central and the gateway (a stdlib leaf), re-exported here.
from protocol.credentials import (
    generate_password,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)

__all__ = [
    "API_TOKEN_PREFIX",
    "INDEX_KEY_LABEL",
    "SESSION_TOKEN_PREFIX",
    "IndexSeal",
    "generate_password",
    "hash_password",
    "new_token",
    "token_hash",
    "verify_password",
]


SESSION_TOKEN_PREFIX = "sfgs_"
API_TOKEN_PREFIX = "sfg_"
#: HKDF info label of the index key; a new layout of the sealed rows gets a new label.
INDEX_KEY_LABEL = b"scanfort-gateway-index/1"

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
