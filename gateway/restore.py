"""Restore instances fetched from an archive: decrypt ScanFort ones, pass others through.

- A ScanFort DICOM-mode instance is restored by :func:`cipher.unprotect` (the original,
  verified by the cipher); any cipher error refuses that instance only.
- An instance ScanFort did not protect is passed through unchanged, byte for byte.
- Bytes that carry ScanFort markers but do not parse as a protected instance are refused
  too: a damaged protected file must never be served as the noise it holds.

Restored bytes live only in memory: an LRU cache with a byte cap (``cache_bytes``), and at
most ``max_concurrent`` restores run at once so memory and CPU stay bounded under load.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom

import cipher
from cipher.errors import CipherError
from gateway.errors import RefusedInstance

_MARKERS = (b"SCANFORT 1", b"scanfort-dicom/")
_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]


@dataclass(frozen=True)
class Restored:
    """An instance as the gateway serves it."""

    data: bytes  # the original DICOM file
    protected: bool  # decrypted (True) or passed through unchanged (False)
    study_uid: str
    series_uid: str
    sop_uid: str


def read_uids(raw: bytes) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs of a DICOM file; empty strings when unreadable."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, defer_size=256,
                             specific_tags=_UID_TAGS)  # fmt: skip
        return (
            str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")),
        )
    except Exception:
        return "", "", ""


class InstanceCache:
    """LRU of restored instances by SOP Instance UID, at most ``cap`` bytes in total.

    Instances larger than an eighth of the cap are not kept.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self._items: OrderedDict[str, Restored] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, sop_uid: str) -> Restored | None:
        with self._lock:
            item = self._items.get(sop_uid)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(sop_uid)
            self.hits += 1
            return item

    def put(self, item: Restored) -> None:
        size = len(item.data)
        # one huge multi-frame must not flush every other instance (nor double the memory)
        if size > self.cap // 8 or not item.sop_uid:
            return
        with self._lock:
            old = self._items.pop(item.sop_uid, None)
            if old is not None:
                self.size -= len(old.data)
            self._items[item.sop_uid] = item
            self.size += size
            while self.size > self.cap:
                _, evicted = self._items.popitem(last=False)
                self.size -= len(evicted.data)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


class Restorer:
    """Turns archive bytes into what a reader may see (or a :class:`RefusedInstance`)."""

    def __init__(self, identities: Sequence[str], cache_bytes: int, max_concurrent: int) -> None:
        self._identities = list(identities)
        self.cache = InstanceCache(cache_bytes)
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def restore(self, raw: bytes) -> Restored:
        # Without ScanFort's markers anywhere in the bytes the instance is not ours: pass it
        # through. With them, the cipher decides; anything it cannot restore is refused.
        if not any(m in raw for m in _MARKERS):
            study, series, sop = read_uids(raw)
            if not sop:
                raise RefusedInstance("unknown", "not a DICOM instance")
            return Restored(raw, False, study, series, sop)
        out = io.BytesIO()
        with self._slots:
            try:
                cipher.unprotect(io.BytesIO(raw), out, self._identities)
            except CipherError as exc:
                if isinstance(exc, cipher.NoIdentityMatchError):
                    reason = "no site identity matches"
                elif isinstance(exc, cipher.FormatError):
                    reason = "damaged protected instance"
                else:
                    reason = "does not authenticate (tampered or damaged)"
                raise RefusedInstance(read_uids(raw)[2] or "unknown", reason) from None
        data = out.getvalue()
        study, series, sop = read_uids(data)
        return Restored(data, True, study, series, sop)

    def cached_or(self, sop_uid: str, fetch: Callable[[], bytes]) -> Restored:
        """The cached instance, or ``fetch()`` restored and cached."""
        hit = self.cache.get(sop_uid)
        if hit is not None:
            return hit
        item = self.restore(fetch())
        if item.sop_uid != sop_uid:
            raise RefusedInstance(sop_uid, "the archive sent a different instance")
        self.cache.put(item)
        return item

