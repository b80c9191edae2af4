"""cipher.dicomstream: the one-pass restore gives the bytes cipher.unprotect gives.

Every DICOM-mode sample (native frames, multi-frame, RGB, encapsulated JPEG 2000 and RLE,
implicit VR, big endian, deflated) is read from a stream that hands out a few bytes at a
time, its ciphertext spooled in memory or in a temporary file; damage is the one
authentication error, a file without the block is recognised with its UIDs.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import pytest

import cipher
from cipher import dicomstream, keys
from cipher.errors import AuthenticationError, NoIdentityMatchError
from tests import gateway_data as data

PATIENT = data.Patient("PAT-S", "STREAM^SAM", "ACC-S", "20240909")
IDENTITY, RECIPIENT = keys.generate_identity()
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm",
                 "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm")
SAMPLES: dict[str, Callable[[], bytes]] = {
    "ct": lambda: data.ct_series(PATIENT, 1, rows=64, cols=64)[0],
    "multiframe": lambda: data.multiframe(PATIENT, 5),
    "rgb": lambda: data.rgb_image(PATIENT),
}


def _pydicom_sample(name: str) -> Callable[[], bytes]:
    return lambda: data.pydicom_file(name, PATIENT)


SAMPLES.update({name: _pydicom_sample(name) for name in PYDICOM_FILES})


class Trickle(io.RawIOBase):
    """A non-seekable stream that returns at most 7 bytes per read (a slow network)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n < 0 else min(n, 7)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def _restore(blob: bytes, spool: Callable[[int], BinaryIO], trickle: bool) -> tuple[bytes, object]:
    src = Trickle(blob) if trickle else io.BytesIO(blob)
    head = dicomstream.scan_head(src, keep=False)
    opened = dicomstream.open_v2(head, [IDENTITY], spool)
    try:
        return b"".join(bytes(p) for p in opened.pieces()), opened
    finally:
        opened.close()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_the_stream_restore_is_byte_exact_and_refuses_damage(name: str) -> None:
    raw = SAMPLES[name]()
    protected = data.protect(raw, RECIPIENT)
    reference = io.BytesIO()
    cipher.unprotect(io.BytesIO(protected), reference, [IDENTITY])
    assert reference.getvalue() == raw
    for spool, trickle in ((lambda n: io.BytesIO(), False),
                           (lambda n: tempfile.TemporaryFile(), True)):  # fmt: skip
        out, opened = _restore(protected, spool, trickle)
        assert out == raw
        assert opened.uids == data.uids(raw)  # type: ignore[attr-defined]
        assert opened.length in (None, len(raw))  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError):
        _restore(data.tamper(protected), lambda n: io.BytesIO(), False)
    with pytest.raises(AuthenticationError):  # cut inside the Pixel Data
        _restore(protected[:-100], lambda n: tempfile.TemporaryFile(), True)
    other, _ = keys.generate_identity()
    head = dicomstream.scan_head(io.BytesIO(protected), keep=False)
    with pytest.raises(NoIdentityMatchError):
        dicomstream.open_v2(head, [other], lambda n: io.BytesIO())


def _restore_whole(blob: bytes) -> bytes:
    head = dicomstream.scan_head(io.BytesIO(blob), keep=False)
    opened = dicomstream.open_v2(head, [IDENTITY], lambda n: io.BytesIO(), whole=True)
    return b"".join(bytes(p) for p in opened.pieces())


@pytest.mark.parametrize("name", list(SAMPLES))
def test_a_whole_restore_in_memory_refuses_any_changed_byte_of_the_value(name: str) -> None:
    """``whole=True`` leaves out the digest of the enciphered value for a file in memory
    (SPEC §2.4, "Reading"): the original's SHA-256 must then refuse every change of it —
    in a frame, at its first and last byte, in an item header between fragments."""
    raw = SAMPLES[name]()
    protected = data.protect(raw, RECIPIENT)
    assert _restore_whole(protected) == raw
    head = dicomstream.scan_head(io.BytesIO(protected), keep=False)
    assert head._inp is not None and head.pixel_length is not None
    start = head._inp.pos  # the value's first byte
    length = (len(protected) - start - 8 if head.pixel_length == 0xFFFFFFFF  # items, then
              else head.pixel_length)  # the sequence delimiter  # fmt: skip
    for at in sorted({start, start + 3, start + length // 2, start + length - 1}):
        damaged = bytearray(protected)
        damaged[at] ^= 0x40
        with pytest.raises(AuthenticationError):
            _restore_whole(bytes(damaged))


def test_a_file_without_the_block_is_named_by_its_uids_and_kept_for_passing_on() -> None:
    raw = data.ct_series(PATIENT, 1, rows=32, cols=32)[0]
    src = Trickle(raw)
    head = dicomstream.scan_head(src, keep=True)
    assert head.marker is None and tuple(head.uids) == data.uids(raw)
    assert head.read + src.read() == raw  # what it read, then the rest: the file unchanged
