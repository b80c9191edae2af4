"""Synthetic studies for the gateway tests and benchmark (never real patient data).

Every image has structure (a disc phantom over a gradient) so a test can tell a restored,
rendered image from the noise the archive holds. ``protect`` runs the real cipher in DICOM
mode, as the agent does.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

import cipher

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    accession: str
    study_date: str
    birth_date: str = "19700101"
    sex: str = "O"


def phantom(rows: int, cols: int, index: int = 0) -> np.ndarray:
    """A 12-bit CT-like slice: air, a body disc and a bright off-centre insert."""
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = rows / 2, cols / 2
    r = np.hypot(y - cy, x - cx)
    img = np.where(r < min(rows, cols) * 0.42, 1000 + (x * 400 // cols), 0)
    ir = np.hypot(y - cy * (0.7 + 0.02 * (index % 10)), x - cx * 1.2)
    img = np.where(ir < min(rows, cols) * 0.08, 2400, img)
    return img.astype(np.uint16)


def _file(ds: Dataset, sop_class: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _base(p: Patient, study_uid: str, series_uid: str, modality: str, n: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = p.patient_id
    ds.PatientName = p.name
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.AccessionNumber = p.accession
    ds.StudyDate = p.study_date
    ds.StudyTime = "101500"
    ds.StudyDescription = "SYNTHETIC PHANTOM"
    ds.ReferringPhysicianName = "REF^SYNTHETIC"
    ds.StudyID = "1"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{modality} phantom"
    ds.Modality = modality
    ds.InstanceNumber = n
    ds.SOPInstanceUID = generate_uid()
    return ds


def ct_series(p: Patient, slices: int, rows: int = 64, cols: int = 64, modality: str = "CT",
              study_uid: str | None = None) -> list[bytes]:  # fmt: skip
    """A series of 16-bit MONOCHROME2 slices with a CT window."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for i in range(slices):
        ds = _base(p, study_uid, series_uid, modality, i + 1)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.SliceLocation = float(i)
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.PixelData = phantom(rows, cols, i).tobytes()
        out.append(_file(ds, CT_IMAGE_STORAGE))
    return out


def multiframe(p: Patient, frames: int, rows: int = 48, cols: int = 40) -> bytes:
    ds = _base(p, generate_uid(), generate_uid(), "OT", 1)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.PixelData = np.stack([phantom(rows, cols, i) * (i + 1) for i in range(frames)]).tobytes()
    return _file(ds, SECONDARY_CAPTURE)


def rgb_image(p: Patient, rows: int = 32, cols: int = 48) -> bytes:
    ds = _base(p, generate_uid(), generate_uid(), "XC", 1)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    y, x = np.mgrid[0:rows, 0:cols]
    img = np.stack([x * 255 // cols, y * 255 // rows, (x + y) % 256], axis=-1).astype(np.uint8)
    ds.PixelData = img.tobytes()
    return _file(ds, SECONDARY_CAPTURE)


def pydicom_file(name: str, p: Patient) -> bytes:
    """One of pydicom's bundled test files with this (synthetic) patient and fresh UIDs."""
    path = get_testdata_file(name)
    assert path is not None, name
    ds = pydicom.dcmread(path)
    ds.PatientID, ds.PatientName, ds.AccessionNumber = p.patient_id, p.name, p.accession
    ds.StudyDate = p.study_date
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def protect(raw: bytes, recipient: str) -> bytes:
    out = io.BytesIO()
    cipher.protect(io.BytesIO(raw), out, [recipient], mode="dicom")
    return out.getvalue()


def tamper(protected: bytes) -> bytes:
    """Flip one bit of the ciphered Pixel Data (the last element of the file)."""
    data = bytearray(protected)
    data[-20] ^= 0x01
    return bytes(data)


def sop_uid(raw: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)


def uids(raw: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def window_noise(protected: bytes) -> np.ndarray:
    """What a viewer pointed at the archive shows: the ciphered pixels, CT-windowed."""
    ds = pydicom.dcmread(io.BytesIO(protected))
    hu = ds.pixel_array.astype(np.float64) - 1024
    return (np.clip((hu - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)


def bodies(resp: requests.Response) -> list[bytes]:
    """The part bodies of a gateway's ``multipart/related`` answer."""
    from gateway.multipart import iter_parts

    boundary = resp.headers["Content-Type"].rsplit("boundary=", 1)[1]
    return [p.body for p in iter_parts([resp.content], boundary, 1 << 30)]
