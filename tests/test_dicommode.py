"""DICOM mode: ciphered Pixel Data, placeholder attributes, age blob in a private block."""

from __future__ import annotations

import io
import os
import random
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import cipher
from cipher import dicommode, fileformat, keys
from cipher.errors import AUTHENTICATION_FAILED, AuthenticationError

pytestmark = pytest.mark.usefixtures("seeded_cipher")

ALL_FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))
# Files the issue names explicitly: big-endian, implicit VR, RLE/JPEG/JPEG 2000,
# multi-frame, RGB, 32-bit; each must go through DICOM mode.
NAMED = [
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_RLE.dcm",  # RLE
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless, RGB
    "examples_ybr_color.dcm",  # JPEG baseline, 30 frames
    "rtdose.dcm",  # native multi-frame, 32-bit
    "SC_rgb_rle_2frame.dcm",  # RLE multi-frame RGB
    "examples_rgb_color.dcm",  # native RGB
    "SC_rgb_rle_32bit.dcm",  # RLE 32-bit RGB
]


def _testdata(name: str) -> bytes:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path).read_bytes()


def _ds(raw: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(raw))


def _protect(raw: bytes, recipient: str, randbytes, policy=None) -> bytes:
    out = io.BytesIO()
    info = dicommode.protect_dicom(
        io.BytesIO(raw), out, [recipient], policy or cipher.DicomPolicy(), randbytes=randbytes
    )
    assert info.mode == "dicom"
    assert info.bytes_in == len(raw) and info.bytes_out == len(out.getvalue())
    return out.getvalue()


def _unprotect(raw: bytes, identity: str) -> bytes:
    out = io.BytesIO()
    info = cipher.unprotect(io.BytesIO(raw), out, [identity])
    assert info.mode == "dicom"
    return out.getvalue()


def _elements(ds: Dataset) -> dict:
    """Top-level elements, without retired group lengths (pydicom never writes them)."""
    return {e.tag: e for e in ds if e.tag.element != 0}


def _assert_same_dataset(original: bytes, restored: bytes) -> None:
    a, b = _ds(original), _ds(restored)
    ea, eb = _elements(a), _elements(b)
    assert ea.keys() == eb.keys()
    for tag in ea:
        assert ea[tag] == eb[tag], tag
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
    assert a.file_meta.get("MediaStorageSOPInstanceUID") == b.file_meta.get(
        "MediaStorageSOPInstanceUID"
    )
    assert a.PixelData == b.PixelData  # byte for byte


def test_every_bundled_file_round_trips(site_keys, seeded_randbytes) -> None:
    """DICOM mode for DICOM with pixels, file mode for everything else, all restored."""
    identity, recipient = site_keys
    modes = {"dicom": 0, "file": 0}
    for path in ALL_FILES:
        raw = Path(path).read_bytes()
        src = io.BytesIO(raw)
        if cipher.is_dicom_with_pixels(src):
            assert src.tell() == 0
            protected = _protect(raw, recipient, seeded_randbytes)
            pd = _ds(protected)
            original = _ds(raw)
            assert len(pd.PixelData) == len(original.PixelData), path
            assert pd["PixelData"].VR == original["PixelData"].VR, path
            if len(original.PixelData) > 16:
                assert pd.PixelData != original.PixelData, path
            _assert_same_dataset(raw, _unprotect(protected, identity))
            modes["dicom"] += 1
        else:
            out = io.BytesIO()
            fileformat.protect_file(src, out, [recipient], randbytes=seeded_randbytes)
            back = io.BytesIO()
            cipher.unprotect(io.BytesIO(out.getvalue()), back, [identity])
            assert back.getvalue() == raw, path
            modes["file"] += 1
    assert modes["dicom"] >= 80 and modes["file"] >= 50, modes


@pytest.mark.parametrize("name", NAMED)
def test_named_kinds_use_dicom_mode(name, site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    raw = _testdata(name)
    assert cipher.is_dicom_with_pixels(io.BytesIO(raw))
    protected = _protect(raw, recipient, seeded_randbytes)
    info = cipher.inspect(io.BytesIO(protected))
    original = _ds(raw)
    assert info["mode"] == "dicom" and info["format_version"] == 1
    assert info["transfer_syntax"] == original.file_meta.TransferSyntaxUID
    assert info["uids"]["SOPInstanceUID"] == original.SOPInstanceUID
    _assert_same_dataset(raw, _unprotect(protected, identity))


def test_identifying_attributes_are_replaced_and_absent(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    raw = _testdata("CT_small.dcm")
    original = _ds(raw)
    protected = _protect(raw, recipient, seeded_randbytes)
    pd = _ds(protected)
    assert pd.PatientName == "PROTECTED"
    assert pd.PatientID == "PROTECTED"
    assert pd.InstitutionName == "PROTECTED"
    assert pd.PatientBirthDate == ""
    for secret in (str(original.PatientName), original.PatientID, original.InstitutionName):
        assert secret.encode() not in protected
    for kw in dicommode.ROUTING_UIDS:  # kept by default
        assert pd[kw].value == original[kw].value
    block = pd.private_block(dicommode.PRIVATE_GROUP, dicommode.PRIVATE_CREATOR)
    assert block[dicommode.ELEM_MARKER].value == "scanfort-dicom/1"


def _synthetic(rows: int = 8, cols: int = 8, frames: int = 2) -> bytes:
    """A small MR dataset with a Latin-1 name and identifiers nested in a sequence."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.PatientName = "Müller^Jérôme"
    ds.PatientID = "ID-4711"
    ds.PatientBirthDate = "19700101"
    item = Dataset()
    item.RequestedProcedureDescription = "MR knee"
    item.ReferringPhysicianName = "Dr^Who"
    ds.ReferencedStudySequence = Sequence([item])
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = random.Random(3).randbytes(rows * cols * frames * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_charset_and_nested_sequences_round_trip(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    raw = _synthetic()
    protected = _protect(raw, recipient, seeded_randbytes)
    pd = _ds(protected)
    assert pd.ReferencedStudySequence[0].ReferringPhysicianName == "PROTECTED"
    assert pd.ReferencedStudySequence[0].RequestedProcedureDescription == "MR knee"
    assert "Müller".encode("latin-1") not in protected
    restored = _ds(_unprotect(protected, identity))
    assert restored.PatientName == "Müller^Jérôme"
    assert restored.ReferencedStudySequence[0].ReferringPhysicianName == "Dr^Who"
    _assert_same_dataset(raw, _unprotect(protected, identity))


def test_frames_are_enciphered_separately(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    ds = _ds(_synthetic(frames=3))
    ds.PixelData = bytes(len(ds.PixelData))  # three identical (black) frames
    buf = io.BytesIO()
    ds.save_as(buf)
    pd = _ds(_protect(buf.getvalue(), recipient, seeded_randbytes))
    n = len(pd.PixelData) // 3
    frames = [pd.PixelData[i * n : (i + 1) * n] for i in range(3)]
    assert len(set(frames)) == 3


def test_replace_uids_policy_round_trips(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    raw = _testdata("MR_small.dcm")
    policy = cipher.DicomPolicy(keep_uids=False)
    protected = _protect(raw, recipient, seeded_randbytes, policy)
    pd, original = _ds(protected), _ds(raw)
    for kw in dicommode.ROUTING_UIDS:
        assert pd[kw].value != original[kw].value
    assert pd.file_meta.MediaStorageSOPInstanceUID == pd.SOPInstanceUID
    _assert_same_dataset(raw, _unprotect(protected, identity))


def test_policy_validates_keywords() -> None:
    with pytest.raises(ValueError, match="unknown"):
        cipher.DicomPolicy(attributes=frozenset({"PatientName", "NotAKeyword"}))
    with pytest.raises(ValueError, match="cannot"):
        cipher.DicomPolicy(attributes=frozenset({"PixelData"}))
    assert {"PatientName", "PatientID", "PatientBirthDate", "OperatorsName",
            "ReferringPhysicianName", "InstitutionName"} <= cipher.DEFAULT_PROTECTED_ATTRIBUTES  # fmt: skip


def test_dicom_mode_refuses_non_dicom_and_double_protection(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    with pytest.raises(cipher.NotDicomError):
        cipher.protect(io.BytesIO(b"plain text"), io.BytesIO(), [recipient], mode="dicom")
    no_pixels = _testdata("rtplan.dcm")
    assert not cipher.is_dicom_with_pixels(io.BytesIO(no_pixels))
    with pytest.raises(cipher.NotDicomError):
        cipher.protect(io.BytesIO(no_pixels), io.BytesIO(), [recipient], mode="dicom")
    protected = _protect(_synthetic(), recipient, seeded_randbytes)
    with pytest.raises(cipher.FormatError):
        cipher.protect(io.BytesIO(protected), io.BytesIO(), [recipient], mode="dicom")


def test_wrong_identity_reports_no_match(site_keys, seeded_randbytes) -> None:
    _, recipient = site_keys
    protected = _protect(_synthetic(), recipient, seeded_randbytes)
    with pytest.raises(cipher.NoIdentityMatchError):
        _unprotect(protected, keys.generate_identity()[0])


def _value_offset(raw: bytes, ds: Dataset, tag) -> tuple[int, int]:
    """Offset and length of an element's value in the file (found by its bytes)."""
    value = ds[tag].value
    if isinstance(value, str):
        value = value.encode()
    pos = raw.rindex(bytes(value))
    return pos, len(value)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_flipping_a_byte_in_each_region_is_detected(name, site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    raw = _testdata(name)
    protected = _protect(raw, recipient, seeded_randbytes)
    pd = _ds(protected)
    block = pd.private_block(dicommode.PRIVATE_GROUP, dicommode.PRIVATE_CREATOR)
    pix, pix_len = _value_offset(protected, pd, "PixelData")
    blob, blob_len = _value_offset(protected, pd, block.get_tag(dicommode.ELEM_BLOB))
    marker, _ = _value_offset(protected, pd, block.get_tag(dicommode.ELEM_MARKER))
    header_end = protected.index(b"\n--- ", blob) + 1
    regions = {
        "pixel first": pix,
        "pixel middle": pix + pix_len // 2,
        "pixel last": pix + pix_len - 1,
        "blob version line": blob + 2,
        "blob header mac": header_end + 10,
        "blob payload": blob + blob_len - 40,
        "blob last": blob + blob_len - 2,
        "marker": marker + 15,
        "blob length": blob + blob_len + 8,  # UL value after the OB element's end
    }
    if dicommode.TRAILING_PADDING in pd:
        pad, pad_len = _value_offset(protected, pd, dicommode.TRAILING_PADDING)
        regions["trailing padding"] = pad + pad_len // 2
    for region, pos in regions.items():
        damaged = bytearray(protected)
        damaged[pos] ^= 0x04
        with pytest.raises(AuthenticationError) as info:
            _unprotect(bytes(damaged), identity)
        assert str(info.value) == AUTHENTICATION_FAILED, region


def test_truncated_file_is_detected(site_keys, seeded_randbytes) -> None:
    identity, recipient = site_keys
    protected = _protect(_testdata("CT_small.dcm"), recipient, seeded_randbytes)
    for cut in (1, 2, 100, 5000):
        with pytest.raises(AuthenticationError):
            _unprotect(protected[:-cut], identity)


def test_swapped_blob_is_detected(site_keys, seeded_randbytes) -> None:
    """The blob of one file does not unlock another file's Pixel Data."""
    identity, recipient = site_keys
    raw = _synthetic()
    a = _ds(_protect(raw, recipient, seeded_randbytes))
    b = _ds(_protect(raw, recipient, seeded_randbytes))
    tag = a.private_block(dicommode.PRIVATE_GROUP, dicommode.PRIVATE_CREATOR).get_tag(
        dicommode.ELEM_BLOB
    )
    len_tag = a.private_block(dicommode.PRIVATE_GROUP, dicommode.PRIVATE_CREATOR).get_tag(
        dicommode.ELEM_BLOB_LENGTH
    )
    a[tag].value, a[len_tag].value = b[tag].value, b[len_tag].value
    out = io.BytesIO()
    a.save_as(out)
    with pytest.raises(AuthenticationError):
        _unprotect(out.getvalue(), identity)


def test_inspect_is_keyless_and_restores_position(site_keys, seeded_randbytes) -> None:
    _, r1 = site_keys
    _, r2 = keys.generate_identity()
    out = io.BytesIO()
    dicommode.protect_dicom(
        io.BytesIO(_synthetic()), out, [r1, r2], cipher.DicomPolicy(), randbytes=seeded_randbytes
    )
    out.seek(0)
    info = cipher.inspect(out)
    assert out.tell() == 0
    assert info["recipients"] == 2
    assert info["pixel_data_bytes"] == 8 * 8 * 2 * 2
    assert set(info["uids"]) == {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    assert "PatientName" in info["protected_attributes"]
    assert "ID-4711" not in repr(info) and "Müller" not in repr(info)


def test_dropped_trailing_padding_is_accepted(site_keys, seeded_randbytes) -> None:
    """PACS drop Data Set Trailing Padding (it has no meaning): still decrypts."""
    identity, recipient = site_keys
    raw = _testdata("CT_small.dcm")
    pd = _ds(_protect(raw, recipient, seeded_randbytes))
    assert dicommode.TRAILING_PADDING in pd
    del pd[dicommode.TRAILING_PADDING]
    out = io.BytesIO()
    pd.save_as(out)
    restored = _ds(_unprotect(out.getvalue(), identity))
    assert restored.PixelData == _ds(raw).PixelData
    assert restored.PatientName == _ds(raw).PatientName


def test_blob_and_pixels_follow_the_spec(site_keys, seeded_randbytes) -> None:
    """Decode the blob with the offsets of SPEC 2.3 and re-encipher frame 1 independently."""
    import hashlib
    import struct

    import numpy as np
    import pyrage

    from cipher import chaos

    identity, recipient = site_keys
    raw = _synthetic(frames=2)
    protected = _protect(raw, recipient, seeded_randbytes)
    pd, original = _ds(protected), _ds(raw)
    block = pd.private_block(0x0011, "SCANFORT 1")
    length = block[0x03].value
    plain = pyrage.decrypt(block[0x02].value[:length], [keys.parse_identity(identity)])
    assert plain[:12] == b"SCANFORT\x01D\x00\x00"
    key, nonce, digest = plain[12:44], plain[44:60], plain[60:92]
    assert plain[92:124] == bytes(32)  # no trailing padding in the input
    layout, unit, _, count, frame_length, n = struct.unpack(">BBHIII", plain[124:140])
    assert (layout, unit, count, frame_length) == (1, 2, 2, 8 * 8 * 2)
    assert digest == hashlib.sha256(pd.PixelData).digest()
    frame_nonce = hashlib.sha256(b"scanfort dicom v1 frame" + nonce + (1).to_bytes(8, "big"))
    frame = np.frombuffer(original.PixelData[frame_length:], "<u2")
    ct = chaos.encrypt(frame, key, frame_nonce.digest()[:16])
    assert pd.PixelData[frame_length:] == ct.tobytes()
    originals = plain[140 : 140 + n]
    assert b"ID-4711" in originals  # the original attributes travel inside the blob
