"""File mode: an age v1 file around a ScanFort header and chaos-enciphered chunks."""

from __future__ import annotations

import io
import os
import random

import pyrage
import pytest

import cipher
from cipher import fileformat, keys
from cipher.errors import AUTHENTICATION_FAILED, AuthenticationError, FormatError

SMALL_CHUNK = 16384  # several chunks from small inputs


def _protect(data: bytes, recipients: list[str], randbytes, chunk_size: int = SMALL_CHUNK) -> bytes:
    out = io.BytesIO()
    info = fileformat.protect_file(
        io.BytesIO(data), out, recipients, chunk_size=chunk_size, randbytes=randbytes
    )
    assert info.mode == "file"
    assert info.bytes_in == len(data)
    assert info.bytes_out == len(out.getvalue())
    return out.getvalue()


def _unprotect(blob: bytes, identities: list[str]) -> bytes:
    out = io.BytesIO()
    info = cipher.unprotect(io.BytesIO(blob), out, identities)
    assert info.mode == "file"
    assert info.bytes_out == len(out.getvalue())
    return out.getvalue()


@pytest.mark.parametrize(
    "size", [0, 1, 63, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 5 * SMALL_CHUNK + 17]
)
def test_round_trip_sizes_around_chunk_boundaries(size, site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    data = random.Random(size).randbytes(size)
    blob = _protect(data, [recipient], seeded_randbytes)
    assert blob.startswith(b"age-encryption.org/v1\n")
    assert _unprotect(blob, [identity]) == data


def test_public_protect_uses_fresh_key_and_default_chunk(site_keys) -> None:
    identity, recipient = site_keys
    data = os.urandom(fileformat.DEFAULT_CHUNK_SIZE + 1000)
    a, b = io.BytesIO(), io.BytesIO()
    cipher.protect(io.BytesIO(data), a, [recipient])
    cipher.protect(io.BytesIO(data), b, [recipient])
    assert a.getvalue() != b.getvalue()
    assert _unprotect(a.getvalue(), [identity]) == data


def test_payload_is_header_then_enciphered_chunks(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    data = bytes(3 * SMALL_CHUNK)  # identical plaintext chunks
    blob = _protect(data, [recipient], seeded_randbytes)
    payload = pyrage.decrypt(blob, [keys.parse_identity(identity)])
    assert payload[:10] == b"SCANFORT\x01F"
    assert int.from_bytes(payload[12:16], "big") == SMALL_CHUNK
    body = payload[fileformat.HEADER_SIZE :]
    assert len(body) == len(data)
    chunks = [body[i : i + SMALL_CHUNK] for i in range(0, len(body), SMALL_CHUNK)]
    assert len(set(chunks)) == 3  # per-chunk nonces: equal plaintext, distinct ciphertext
    assert all(c != bytes(SMALL_CHUNK) for c in chunks)


def test_several_recipients_each_decrypt(seeded_randbytes) -> None:
    pairs = [keys.generate_identity() for _ in range(3)]
    data = b"scan" * 5000
    blob = _protect(data, [r for _, r in pairs], seeded_randbytes)
    for identity, _ in pairs:
        assert _unprotect(blob, [identity]) == data
    info = cipher.inspect(io.BytesIO(blob))
    assert info["recipients"] == 3


def test_wrong_identity_reports_no_match(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    blob = _protect(b"x" * 100, [recipient], seeded_randbytes)
    other, _ = keys.generate_identity()
    with pytest.raises(cipher.NoIdentityMatchError, match="no identity matches"):
        _unprotect(blob, [other])


def _regions(blob: bytes) -> dict[str, int]:
    header_end = blob.index(b"\n--- ") + 1
    mac_line_end = blob.index(b"\n", header_end) + 1
    return {
        "version line": 3,
        "stanza type": blob.index(b"-> X25519") + 4,
        "header mac": header_end + 10,
        "payload nonce": mac_line_end + 3,
        "scanfort header": mac_line_end + 16 + 9,
        "first chunk": mac_line_end + 16 + 200,
        "middle": (mac_line_end + len(blob)) // 2,
        "last tag": len(blob) - 1,
    }


def test_flipping_any_byte_region_fails_authentication(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    data = random.Random(7).randbytes(150_000)  # three age chunks
    blob = _protect(data, [recipient], seeded_randbytes)
    for region, pos in _regions(blob).items():
        for bit in (0x01, 0x80):
            damaged = bytearray(blob)
            damaged[pos] ^= bit
            with pytest.raises((AuthenticationError, FormatError)) as info:
                _unprotect(bytes(damaged), [identity])
            if region != "version line":  # the first line decides whether it is age at all
                assert info.type is AuthenticationError, region
                assert str(info.value) == AUTHENTICATION_FAILED


def test_damaged_recipient_stanza_is_detected(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    blob = _protect(b"x" * 1000, [recipient], seeded_randbytes)
    body = blob.index(b"\n", blob.index(b"-> X25519")) + 5
    damaged = bytearray(blob)
    damaged[body] ^= 0x01
    # age cannot tell a damaged stanza from one for another identity (see SPEC 2.1)
    with pytest.raises((AuthenticationError, cipher.NoIdentityMatchError)):
        _unprotect(bytes(damaged), [identity])


@pytest.mark.parametrize("cut", [1, 16, 17, 1000, 65_536])
def test_truncation_fails_authentication(cut, site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    blob = _protect(random.Random(cut).randbytes(140_000), [recipient], seeded_randbytes)
    with pytest.raises(AuthenticationError):
        _unprotect(blob[:-cut], [identity])


def test_plain_age_file_is_a_format_error(site_keys) -> None:
    identity, recipient = site_keys
    blob = pyrage.encrypt(b"not a scanfort payload" * 10, [keys.parse_recipient(recipient)])
    with pytest.raises(FormatError):
        _unprotect(blob, [identity])


def test_not_protected_input_is_a_format_error(site_keys) -> None:
    identity, _ = site_keys
    with pytest.raises(FormatError):
        cipher.unprotect(io.BytesIO(b"hello"), io.BytesIO(), [identity])
    with pytest.raises(FormatError):
        cipher.inspect(io.BytesIO(b"hello"))


def test_inspect_without_key_gives_exact_sizes(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    for size in (0, 5, 65_536 - 64, 65_536 - 63, 300_001):
        blob = _protect(bytes(size), [recipient], seeded_randbytes)
        src = io.BytesIO(blob)
        src.seek(0)
        info = cipher.inspect(src)
        assert src.tell() == 0
        assert info["mode"] == "file"
        assert info["format_version"] == 1
        assert info["recipients"] == 1
        assert info["file_bytes"] == len(blob)
        assert info["content_bytes"] == size


def test_invalid_recipient_and_chunk_size_raise(seeded_randbytes) -> None:
    with pytest.raises(cipher.InvalidRecipientError):
        cipher.protect(io.BytesIO(b"x"), io.BytesIO(), ["age1nope"])
    with pytest.raises(ValueError):
        fileformat.protect_file(
            io.BytesIO(b"x"), io.BytesIO(), [keys.generate_identity()[1]], chunk_size=0
        )
    with pytest.raises(ValueError, match="mode"):
        cipher.protect(io.BytesIO(b"x"), io.BytesIO(), [keys.generate_identity()[1]], mode="x")


def test_payload_follows_the_spec_byte_for_byte(site_keys, seeded_randbytes) -> None:
    """Rebuild the payload from SPEC 2.2 alone (SHA-256 nonces, chaos per chunk)."""
    import hashlib

    import numpy as np

    from cipher import chaos

    identity, recipient = site_keys
    data = random.Random(11).randbytes(2 * SMALL_CHUNK + 123)
    blob = _protect(data, [recipient], seeded_randbytes)
    payload = pyrage.decrypt(blob, [keys.parse_identity(identity)])
    key, nonce = payload[16:48], payload[48:64]
    expected = bytearray(payload[:64])
    for i in range(0, len(data), SMALL_CHUNK):
        label = b"scanfort file v1 chunk"
        unit_nonce = hashlib.sha256(label + nonce + (i // SMALL_CHUNK).to_bytes(8, "big")).digest()
        chunk = np.frombuffer(data[i : i + SMALL_CHUNK], np.uint8)
        expected += chaos.encrypt(chunk, key, unit_nonce[:16]).tobytes()
    assert payload == bytes(expected)
    assert payload[8:12] == b"\x01F\x00\x00"


@pytest.mark.parametrize("limit", [0, SMALL_CHUNK - 5, SMALL_CHUNK, 3 * SMALL_CHUNK])
def test_streamed_and_in_memory_paths_give_the_same_payload(limit, site_keys,
                                                            monkeypatch) -> None:
    """Inputs above IN_MEMORY_MAX are streamed through age; the payload must not differ."""
    identity, recipient = site_keys
    data = random.Random(5).randbytes(2 * SMALL_CHUNK + 777)
    in_memory = _protect(data, [recipient], random.Random(3).randbytes)
    monkeypatch.setattr(fileformat, "IN_MEMORY_MAX", limit)
    streamed = _protect(data, [recipient], random.Random(3).randbytes)
    parsed = [keys.parse_identity(identity)]
    assert pyrage.decrypt(streamed, parsed) == pyrage.decrypt(in_memory, parsed)
    assert _unprotect(streamed, [identity]) == data
