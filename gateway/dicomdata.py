"""What WADO-RS serves from a restored instance: metadata JSON, frames, bulk data, images.

Rendering covers uncompressed grayscale (``MONOCHROME1``/``MONOCHROME2``, with Modality LUT
rescale and a window centre/width) and RGB; compressed transfer syntaxes render when
pydicom has a decoder for them (pylibjpeg).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag

PIXEL_DATA = Tag(0x7FE0, 0x0010)
BULK_THRESHOLD = 1024  # binary values longer than this become BulkDataURI in metadata
THUMBNAIL_PX = 128


class FrameError(ValueError):
    """A frame number or bulk data tag the instance does not have (answered 404/400)."""


def parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def transfer_syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))


def metadata_json(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of ``ds``; large binary values become BulkDataURI."""

    def bulk(elem: DataElement) -> str:
        return f"{instance_url}/bulkdata/{int(elem.tag):08X}"

    handler: Callable[[DataElement], str] = bulk
    out: dict[str, Any] = {}
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        out["00020010"] = {"vr": "UI", "Value": [str(ts)]}
    out.update(ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                               bulk_data_element_handler=handler))  # fmt: skip
    return out


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def frames(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """The requested frames (1-based) in the stored transfer syntax."""
    if PIXEL_DATA not in ds:
        raise FrameError("instance has no pixel data")
    count = number_of_frames(ds)
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise FrameError(f"frame {bad[0]} out of range 1..{count}")
    value: bytes = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        all_frames = list(generate_frames(value, number_of_frames=count))
        return [all_frames[n - 1] for n in numbers]
    bits = int(ds.BitsAllocated)
    per_frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits
    if per_frame_bits % 8:
        raise FrameError("frames of 1-bit pixel data are not byte aligned")
    size = per_frame_bits // 8
    return [value[(n - 1) * size : n * size] for n in numbers]


def bulkdata(ds: Dataset, tag_hex: str) -> bytes:
    try:
        tag = Tag(int(tag_hex, 16))
    except ValueError as exc:
        raise FrameError(f"not a tag: {tag_hex!r}") from exc
    if tag not in ds:
        raise FrameError(f"instance has no element {tag_hex}")
    value = ds[tag].value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin-1", "replace")
    raise FrameError(f"element {tag_hex} is not bulk data")


def _window(ds: Dataset, frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    data = frame.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    data = data * slope + intercept
    if window is None:
        wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
        if wc is not None and ww is not None:
            wc = wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc
            ww = ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww
            window = (float(wc), float(ww))
    if window is None:
        lo, hi = float(data.min()), float(data.max())
    else:
        center, width = window
        width = max(width, 1.0)
        lo, hi = center - width / 2.0, center + width / 2.0
    scaled = np.clip((data - lo) / max(hi - lo, 1e-9), 0.0, 1.0) * 255.0
    out = scaled.round().astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def render(
    ds: Dataset,
    frame_number: int = 1,
    *,
    window: tuple[float, float] | None = None,
    fmt: str = "jpeg",
    thumbnail: bool = False,
    quality: int = 90,
) -> bytes:
    """The frame as a JPEG or PNG, windowed (grayscale) or as stored (RGB)."""
    from PIL import Image

    count = number_of_frames(ds)
    if not 1 <= frame_number <= count:
        raise FrameError(f"frame {frame_number} out of range 1..{count}")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise FrameError(f"cannot decode pixel data: {type(exc).__name__}") from exc
    if count > 1:
        pixels = pixels[frame_number - 1]
    samples = int(ds.get("SamplesPerPixel", 1))
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples == 1:
        image = Image.fromarray(_window(ds, pixels, window), mode="L")
    elif samples == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        if pixels.dtype != np.uint8:
            pixels = (pixels.astype(np.float64) / max(float(pixels.max()), 1.0) * 255).astype(
                np.uint8
            )
        image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    else:
        raise FrameError(f"cannot render {samples} samples per pixel")
    if thumbnail:
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()
