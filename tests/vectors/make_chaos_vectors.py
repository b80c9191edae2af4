"""Regenerate ``chaos_v1.json``: ``python tests/vectors/make_chaos_vectors.py``.

Inputs are defined by a formula (no RNG), so an independent implementation can rebuild
them: element i (C order) of a case is ``(i * 2654435761 + seed) mod 2^32 >> 8`` masked to
the case's ``bits``. Keys and nonces are SHA-256 of a label. Small cases store the full
ciphertext in hex, large ones its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

CASES: list[dict[str, Any]] = [
    {"name": "one byte", "shape": [1], "dtype": "uint8", "bits": 8, "seed": 1},
    {"name": "two bytes", "shape": [2], "dtype": "uint8", "bits": 8, "seed": 2},
    {"name": "one uint16", "shape": [1], "dtype": "uint16", "bits": 16, "seed": 3},
    {"name": "odd 3x5x3", "shape": [3, 5, 3], "dtype": "uint8", "bits": 8, "seed": 4},
    {"name": "odd 127x131", "shape": [127, 131], "dtype": "uint8", "bits": 8, "seed": 5},
    {"name": "12-bit stored 64x65", "shape": [64, 65], "dtype": "uint16", "bits": 12, "seed": 6},
    {"name": "uint16 big-endian 33x17", "shape": [33, 17], "dtype": ">u2", "bits": 16, "seed": 7},
    {"name": "RGB interleaved 31x29x3", "shape": [31, 29, 3], "dtype": "uint8", "bits": 8, "seed": 8},
    {"name": "multi-frame 3x40x40", "shape": [3, 40, 40], "dtype": "uint16", "bits": 12, "seed": 9},
    {"name": "all zero 256x256", "shape": [256, 256], "dtype": "uint8", "bits": 0, "seed": 0},
    {"name": "CT 512x512", "shape": [512, 512], "dtype": "uint16", "bits": 12, "seed": 10},
]
FULL_HEX_LIMIT = 4096
HERE = Path(__file__).resolve().parent


def make_input(case: dict[str, Any]) -> np.ndarray:
    count = int(np.prod(case["shape"]))
    i = np.arange(count, dtype=np.uint64)
    v = ((i * np.uint64(2654435761) + np.uint64(case["seed"])) % np.uint64(2**32)) >> np.uint64(8)
    v &= np.uint64((1 << case["bits"]) - 1)
    return v.astype(np.dtype(case["dtype"])).reshape(case["shape"])


def key_nonce(case: dict[str, Any]) -> tuple[bytes, bytes]:
    key = hashlib.sha256(f"scanfort vector key {case['name']}".encode()).digest()
    nonce = hashlib.sha256(f"scanfort vector nonce {case['name']}".encode()).digest()[:16]
    return key, nonce


def ciphertext_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def main() -> int:
    sys.path.insert(0, str(HERE.parents[1]))
    from cipher import chaos

    out = []
    for case in CASES:
        key, nonce = key_nonce(case)
        ct = ciphertext_bytes(chaos._encrypt_with(make_input(case), key, nonce, chaos.REFERENCE))
        entry = dict(case, key=key.hex(), nonce=nonce.hex(), sbox=chaos.sbox(key, nonce).tobytes().hex())
        entry["ciphertext_sha256"] = hashlib.sha256(ct).hexdigest()
        if len(ct) <= FULL_HEX_LIMIT:
            entry["ciphertext_hex"] = ct.hex()
        out.append(entry)
    doc = {
        "cipher": "scanfort chaos v1",
        "input": "element i = ((i*2654435761 + seed) mod 2^32) >> 8, masked to bits; C order",
        "ciphertext": "little-endian bytes of the encrypted array",
        "vectors": out,
    }
    (HERE / "chaos_v1.json").write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
