"""cipher.profile: attributes the policy keeps are never decoded, and stay writable."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from cipher.profile import DicomPolicy, apply_policy


def _read(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return pydicom.dcmread(path)


def _values(ds: pydicom.Dataset) -> dict[int, str]:
    return {int(e.tag): str(e.value) for e in ds.iterall() if e.VR != "SQ"
            and int(e.tag) != 0x7FE00010}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"])
@pytest.mark.parametrize("options", [["retain-uids", "retain-long-full-dates"], []])
def test_kept_attributes_stay_raw_and_equal_a_fully_decoded_run(name, options) -> None:
    policy = DicomPolicy.from_names("profile", options, None)
    lazy = _read(name)
    apply_policy(lazy, policy, lambda n: b"\x01" * n)
    raw = [t for t in lazy.keys() if lazy.get_item(t).is_raw]
    assert raw, "every attribute was decoded"
    decoded = _read(name)
    for _elem in decoded.iterall():  # the old way: decode everything first
        pass
    apply_policy(decoded, policy, lambda n: b"\x01" * n)
    for ds in (lazy, decoded):  # written explicit VR little endian (the visible file's)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out_lazy, out_decoded = io.BytesIO(), io.BytesIO()
    lazy.save_as(out_lazy, implicit_vr=False, little_endian=True)
    decoded.save_as(out_decoded, implicit_vr=False, little_endian=True)
    back_lazy = pydicom.dcmread(io.BytesIO(out_lazy.getvalue()))
    back_decoded = pydicom.dcmread(io.BytesIO(out_decoded.getvalue()))
    assert _values(back_lazy) == _values(back_decoded)
    assert len(_values(back_lazy)) > 10
