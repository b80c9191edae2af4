"""cipher._native.walk: the C walk over a file in memory finds what the Python walk finds.

``dicomstream.scan_head`` over bytes in memory walks the elements in C; the Python walk
stays for streams and is the reference. Both must keep the same UIDs and block, stop at the
same element, leave the reader at the same place and fail with the same error on every
file of pydicom's test corpus, on ScanFort's protected samples, on every truncation of
their headers and on a changed byte anywhere in them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest

import cipher
from cipher import dicomstream, keys
from tests import gateway_data as data

pytestmark = pytest.mark.skipif(dicomstream._walk is None, reason="cipher._native not built")

PATIENT = data.Patient("PAT-W", "WALK^WENDY", "ACC-W", "20240101")
_, RECIPIENT = keys.generate_identity()


def _outcome(raw: bytes, walked: bool, monkeypatch: pytest.MonkeyPatch,
             stop: int | None) -> tuple[object, ...]:  # fmt: skip
    with monkeypatch.context() as m:
        if not walked:
            m.setattr(dicomstream, "_walk", None)
        try:
            head = dicomstream.scan_head(io.BytesIO(raw), keep=False, stop_after_group=stop)
        except Exception as exc:  # the error is part of what must agree
            return (type(exc).__name__,)
    assert head._inp is not None
    return (tuple(head.uids), head.marker, head.sealed, head.pixel_length, head._inp.pos)


def _agree(raw: bytes, monkeypatch: pytest.MonkeyPatch,
           stop: int | None = dicomstream._NO_BLOCK_AFTER) -> tuple[object, ...]:  # fmt: skip
    walked = _outcome(raw, True, monkeypatch, stop)
    assert walked == _outcome(raw, False, monkeypatch, stop)
    return walked


def _corpus() -> Iterator[Path]:
    """pydicom's bundled test files (its downloadable ones are not fetched)."""
    yield from sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm"))


def test_every_pydicom_test_file_walks_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    files = [path.read_bytes() for path in _corpus()]
    assert len(files) > 50
    for stop in (dicomstream._NO_BLOCK_AFTER, None):  # stopping early, and on to Pixel Data
        outcomes = [_agree(raw, monkeypatch, stop) for raw in files]
        reached = sum(len(o) > 1 and o[3] is not None for o in outcomes)
        assert reached > (30 if stop is None else 0)
        assert len({o[0] for o in outcomes if len(o) == 1}) >= 2  # errors of several kinds


def _protected() -> list[bytes]:
    samples = [data.ct_series(PATIENT, 1, rows=32, cols=32)[0], data.multiframe(PATIENT, 3),
               data.pydicom_file("MR_small_bigendian.dcm", PATIENT),
               data.pydicom_file("MR_small_implicit.dcm", PATIENT),
               data.pydicom_file("JPEG2000.dcm", PATIENT)]  # fmt: skip
    return [data.protect(raw, RECIPIENT) for raw in samples] + samples[:1]


def test_protected_files_cut_anywhere_in_their_header_walk_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for raw in _protected():
        whole = _agree(raw, monkeypatch, None)
        assert len(whole) > 1 and whole[3] is not None
        end = whole[4]
        assert isinstance(end, int)
        kinds = {_agree(raw[:cut], monkeypatch, stop)[0] for cut in range(0, end + 1, 3)
                 for stop in (dicomstream._NO_BLOCK_AFTER, None)}  # fmt: skip
        assert "FormatError" in kinds or "AuthenticationError" in kinds


def test_protected_files_with_a_changed_byte_walk_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in _protected()[:3]:
        end = _agree(raw, monkeypatch, None)[4]
        assert isinstance(end, int)
        for at in range(128, end, 5):
            for flip in (0xFF, 0x80, 0x01):
                changed = bytearray(raw)
                changed[at] ^= flip
                _agree(bytes(changed), monkeypatch)


def test_a_restore_reads_the_same_original_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    identity, recipient = keys.generate_identity()
    original = data.ct_series(PATIENT, 1, rows=32, cols=32)[0]
    protected = data.protect(original, recipient)
    out = io.BytesIO()
    cipher.unprotect(io.BytesIO(protected), out, [identity])
    assert out.getvalue() == original
    head = dicomstream.scan_head(io.BytesIO(protected), keep=False)
    opened = dicomstream.open_v2(head, [identity], lambda n: io.BytesIO(), whole=True)
    assert b"".join(bytes(p) for p in opened.pieces()) == original
    assert opened.uids == data.uids(original)


def test_walk_arguments_are_checked() -> None:
    from cipher import _native

    with pytest.raises(ValueError):
        _native.walk(b"\0" * 10, 11, True, True, -1, -1, ())
    with pytest.raises(ValueError):
        _native.walk(b"\0" * 10, 0, True, True, -1, -1, tuple(range(9)))
    elements, status, end = _native.walk(b"", 0, True, True, -1, -1, ())
    assert (elements, status, end) == ([], 0, 0)


def test_the_pixel_value_is_found_walking_on_from_where_the_decision_stopped() -> None:
    found = 0
    for path in _corpus():
        raw = path.read_bytes()
        try:
            early = dicomstream.scan_head(io.BytesIO(raw), keep=False)
            full = dicomstream.scan_head(io.BytesIO(raw), keep=False, stop_after_group=None)
        except cipher.CipherError:
            continue
        assert full._inp is not None
        expected = full._inp.pos if full.pixel_length is not None else None
        assert dicomstream.pixel_value_at(early) == expected, path.name
        found += expected is not None
    assert found > 30
