"""cipher.dicomframes: one frame of an opened v2 instance equals that frame of the original.

Synthetic multi-frames (16-bit little endian, 8-bit RGB, 16-bit big endian) are protected
in DICOM mode and opened from a stream; every frame unit deciphered on its own must equal
the original's bytes at that frame's place, and the value span must be where the original
holds its Pixel Data. Layouts without a unit per frame (encapsulated, deflated) have none.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian

from cipher import dicomframes, dicomstream, keys
from tests import gateway_data as data


def _opened(protected: bytes, identity: str) -> dicomstream.Opened:
    head = dicomstream.scan_head(io.BytesIO(protected), keep=False)
    return dicomstream.open_v2(head, [identity], lambda n: io.BytesIO())


def _rgb_multiframe(frames: int) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data.rgb_image(data.Patient("P", "RGB^RIA", "A", "20240101"))))
    one = np.frombuffer(ds.PixelData, np.uint8)
    ds.NumberOfFrames = frames
    ds.PixelData = np.concatenate([(one + 7 * i).astype(np.uint8) for i in range(frames)]).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _big_endian(raw: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(raw))
    values = np.frombuffer(ds.PixelData, "<u2")
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = values.astype(">u2").tobytes()
    ds["PixelData"].VR = "OW"
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True, little_endian=False, implicit_vr=False)
    return out.getvalue()


@pytest.mark.parametrize("kind", ["16-bit LE", "8-bit RGB", "16-bit BE"])
def test_each_frame_deciphered_alone_is_the_originals(kind: str) -> None:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-D", "FRAME^DORA", "ACC-D", "20240713")
    raw = {"16-bit LE": lambda: data.multiframe(patient, 9, rows=24, cols=20),
           "8-bit RGB": lambda: _rgb_multiframe(5),
           "16-bit BE": lambda: _big_endian(data.multiframe(patient, 4, rows=8, cols=6)),
           }[kind]()  # fmt: skip
    protected = data.protect(raw, recipient)
    opened = _opened(protected, identity)
    original = pydicom.dcmread(io.BytesIO(raw))
    units = dicomframes.frame_units(opened)
    assert units is not None
    span = dicomframes.value_span(opened)
    assert span is not None
    offset, length = span
    assert raw[offset:offset + length] == bytes(original.PixelData)  # where the value lies
    assert opened.header() == raw[:offset] and units.value_offset == offset
    assert units.count == int(original.NumberOfFrames)
    visible = bytes(pydicom.dcmread(io.BytesIO(protected)).PixelData)
    for n in range(1, units.count + 1):
        start, stop = units.span(n)
        assert stop - start == units.frame_length
        frame = dicomframes.decipher_frame(opened, n, visible[start:stop])
        assert frame == raw[offset + start:offset + stop], n
        assert frame != visible[start:stop]  # it was enciphered
    with pytest.raises(ValueError):
        units.span(units.count + 1)
    with pytest.raises(ValueError):
        dicomframes.decipher_frame(opened, 1, visible[:units.frame_length - 2])


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "image_dfl.dcm"])
def test_layouts_without_a_unit_per_frame_have_no_frame_units(name: str) -> None:
    identity, recipient = keys.generate_identity()
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as f:
        raw = f.read()
    protected = data.protect(raw, recipient)
    opened = _opened(protected, identity)
    assert dicomframes.frame_units(opened) is None
    if name == "image_dfl.dcm":  # deflated: the value is no byte range of the original
        assert dicomframes.value_span(opened) is None
