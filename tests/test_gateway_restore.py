"""gateway.restore.Restorer on instances in memory: what is restored, passed through or
refused, decided from the header (the pixels may hold any bytes)."""

from __future__ import annotations

import io

import pydicom
import pytest

from cipher import keys
from gateway.errors import RefusedInstance
from gateway.restore import Restorer
from tests import gateway_data as data

PATIENT = data.Patient("PAT-R", "RESTORE^RITA", "ACC-R", "20240202")
IDENTITY, RECIPIENT = keys.generate_identity()


def _restorer() -> Restorer:
    return Restorer([IDENTITY], cache_bytes=1 << 20, max_concurrent=2)


def _with_pixels(raw: bytes, pixels: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.PixelData = pixels + bytes(len(ds.PixelData) - len(pixels))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_protected_instance_is_restored_exactly() -> None:
    original = data.ct_series(PATIENT, 1, rows=64, cols=64)[0]
    item = _restorer().restore(data.protect(original, RECIPIENT))
    assert item.protected and item.data == original
    assert (item.study_uid, item.series_uid, item.sop_uid) == data.uids(original)


def test_scanfort_markers_in_the_pixels_of_another_instance_pass_through() -> None:
    plain = data.ct_series(PATIENT, 1, rows=64, cols=64)[0]
    odd = _with_pixels(plain, b"SCANFORT 1 scanfort-dicom/2 SCANFORT 1")
    item = _restorer().restore(odd)
    assert not item.protected and item.data == odd


@pytest.mark.parametrize("where", ["creator", "description"])
def test_markers_in_the_header_outside_a_readable_block_are_refused(where: str) -> None:
    original = data.ct_series(PATIENT, 1, rows=64, cols=64)[0]
    if where == "creator":  # a protected instance whose block lost its private creator
        raw = data.protect(original, RECIPIENT).replace(b"SCANFORT 1", b"SCANFORX 1", 1)
    else:  # an instance that names ScanFort's block in a text element
        ds = pydicom.dcmread(io.BytesIO(original))
        ds.SeriesDescription = "SCANFORT 1"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        raw = out.getvalue()
    with pytest.raises(RefusedInstance):
        _restorer().restore(raw)
