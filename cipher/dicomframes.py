"""Single frames of an opened DICOM mode v2 instance, deciphered one at a time.

:class:`cipher.dicomstream.Opened` restores the whole original in one pass and checks its
SHA-256 after the last byte (SPEC §2.4 "Reading"). A reader that already ran that pass
over the same enciphered value ``V[0:L]`` and saw it succeed may later decipher single
native frames of ``V`` without running it again (SPEC §2.4, "Reading one frame again"):
the restore is a deterministic function of the authenticated blob (key ``K``, nonce
``N``, layout) and of ``V``, so the same bytes of ``V`` decipher to the same, verified
bytes. Making sure the bytes are the same is the caller's job (the gateway keeps a digest
of each unit it read during that pass and compares it before deciphering).

Only layout 1 (native frames) is cut into frames here; the other layouts have no unit
per frame and need the whole pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from cipher import _common, chaos, dicomfile
from cipher.dicomstream import Opened

__all__ = ["FrameUnits", "decipher_frame", "frame_units", "value_span"]


@dataclass(frozen=True)
class FrameUnits:
    """Where the frames of an opened instance lie in its enciphered value ``V``."""

    count: int  # frames (units labelled ``… v2 frame``)
    frame_length: int  # bytes per frame
    value_offset: int  # offset of ``V`` in the original file (frame ``n`` starts at
    #                   value_offset + (n - 1) * frame_length there)

    def span(self, number: int) -> tuple[int, int]:
        """(start, stop) of frame ``number`` (1-based) in ``V``."""
        if not 1 <= number <= self.count:
            raise ValueError(f"frame {number} out of range 1..{self.count}")
        return (number - 1) * self.frame_length, number * self.frame_length


def frame_units(opened: Opened) -> FrameUnits | None:
    """The frame units of ``opened``, or None when its layout has none (whole value,
    fragments) or the original was deflated (frames do not lie at fixed offsets)."""
    blob = opened._blob
    layout = blob.layout
    if layout.kind != dicomfile.LAYOUT_FRAMES or blob.source.flags & dicomfile.FLAG_DEFLATED:
        return None
    return FrameUnits(layout.count, layout.frame_length, blob.source.offset)


def value_span(opened: Opened) -> tuple[int, int] | None:
    """(offset, length ``L``) of the Pixel Data value in the original file; None when the
    original was deflated (the value is not a byte range of the file)."""
    blob = opened._blob
    if blob.source.flags & dicomfile.FLAG_DEFLATED:
        return None
    return blob.source.offset, blob.layout.value_length


def decipher_frame(opened: Opened, number: int, enciphered: bytes | memoryview) -> bytes:
    """Frame ``number`` (1-based) of the original from its enciphered bytes (the span
    :meth:`FrameUnits.span` gives in ``V``). Only for a value whose whole restore was
    verified before (see the module's docstring); raises ValueError for a frame the layout
    does not have or bytes of the wrong length."""
    blob = opened._blob
    units = frame_units(opened)
    if units is None:
        raise ValueError("this instance has no frame units")
    units.span(number)
    if len(enciphered) != units.frame_length:
        raise ValueError("enciphered frame of the wrong length")
    nonce = _common.derive_nonce(dicomfile.LABEL_FRAME, blob.nonce, number - 1)
    # the visible value keeps the source's byte order; the cipher sees 16-bit big-endian
    # units as little-endian values (as the whole pass does, dicomfile._unit_pieces)
    big = blob.layout.unit == dicomfile.UNIT_U16BE
    out = chaos.decrypt_bytes(dicomfile._swap16(enciphered) if big else enciphered,
                              blob.key, nonce)
    return bytes(dicomfile._swap16(out)) if big else bytes(out)
