"""Restore instances fetched from an archive: decrypt ScanFort ones, pass others through.

- A ScanFort DICOM-mode instance is restored by :func:`cipher.unprotect` (the original,
  verified by the cipher); any cipher error refuses that instance only.
- An instance ScanFort did not protect is passed through unchanged, byte for byte.
- Bytes that carry ScanFort markers before their Pixel Data but do not parse as a protected
  instance are refused too: a damaged protected file must never be served as the noise it
  holds. (ScanFort writes its block before Pixel Data; the pixels of another instance may
  hold any bytes.)

Restored bytes live only in memory: an LRU cache with a byte cap (``cache_bytes``), and at
most ``max_concurrent`` restores run at once so memory and CPU stay bounded under load.

An instance is read from the archive as a stream (:meth:`Restorer.open_stream`): up to
:data:`STREAM_ABOVE` bytes it is taken whole, restored and verified before any byte leaves;
a larger one is never held whole: its enciphered Pixel Data goes to an unlinked temporary
file (ciphertext only: nothing decrypted touches a disk) while its digest is checked, then
it is deciphered frame by frame as the client takes it (:class:`Streamed`), and the
original's SHA-256 is checked after its last byte (a mismatch aborts the response).
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pydicom

import cipher
from cipher import dicomfile, dicomstream
from cipher.errors import CipherError
from gateway.errors import RefusedInstance

#: Instances up to this size are restored whole in memory (and may be cached); larger ones
#: are streamed. Also the most of a large instance held in memory at once (the default of
#: the ``stream_above_bytes`` setting).
STREAM_ABOVE = 32 * 1024 * 1024
_READ = 1024 * 1024

_MARKERS = (b"SCANFORT 1", b"scanfort-dicom/")
_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]


Piece = bytes | memoryview


class Restored:
    """An instance as the gateway serves it: the original DICOM file, kept in the pieces the
    restore produced it in (a retrieve writes them as they are, no copy of the whole
    instance); :attr:`data` joins them once, for whoever needs the file in one piece."""

    __slots__ = ("_pieces", "archive_uids", "length", "protected", "series_uid", "sop_uid",
                 "study_uid")  # fmt: skip

    def __init__(self, data: bytes | Sequence[Piece], protected: bool, study_uid: str,
                 series_uid: str, sop_uid: str,
                 archive_uids: tuple[str, str, str] | None = None) -> None:  # fmt: skip
        self._pieces: tuple[Piece, ...] = (data,) if isinstance(data, bytes) else tuple(data)
        self.length = sum(len(piece) for piece in self._pieces)
        self.protected = protected  # decrypted (True) or passed through unchanged (False)
        self.study_uid = study_uid
        self.series_uid = series_uid
        self.sop_uid = sop_uid
        #: the UIDs the archive labels it with, when they differ (protected without
        #: retain-uids)
        self.archive_uids = archive_uids

    @property
    def archive(self) -> tuple[str, str, str]:
        return self.archive_uids or (self.study_uid, self.series_uid, self.sop_uid)

    @property
    def pieces(self) -> tuple[Piece, ...]:
        """The file's bytes, in order."""
        return self._pieces

    @property
    def data(self) -> bytes:
        """The whole file (joined once; then held instead of the pieces)."""
        pieces = self._pieces
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        data = b"".join(pieces)
        self._pieces = (data,)
        return data


@dataclass
class Streamed:
    """A large instance on its way out, produced piece by piece as the client reads it."""

    protected: bool
    study_uid: str
    series_uid: str
    sop_uid: str
    length: int | None  # of the original, when known in advance
    _pieces: Iterator[bytes | memoryview]
    _close: Callable[[], None] = field(default=lambda: None)
    #: the original up to its Pixel Data value, when known (from the authenticated blob)
    header: bytes | None = None
    #: the UIDs the archive labels it with, when they differ (protected without retain-uids)
    archive_uids: tuple[str, str, str] | None = None
    #: the opened v2 instance it comes from (its blob and staged ciphertext), when protected
    opened: dicomstream.Opened | None = None

    @property
    def archive(self) -> tuple[str, str, str]:
        return self.archive_uids or (self.study_uid, self.series_uid, self.sop_uid)

    def pieces(self) -> Iterator[bytes | memoryview]:
        """The instance's bytes; :class:`RefusedInstance` after the last one when the
        original's SHA-256 does not match (the response must then be cut short)."""
        try:
            yield from self._pieces
        except CipherError:
            raise RefusedInstance(self.sop_uid, "does not authenticate (tampered or damaged)",
                                  ) from None
        finally:
            self.close()

    def close(self) -> None:
        self._close()


class _Recorder:
    """``read(n)`` over bytes already read, then the rest of a stream; keeps what it served
    until :meth:`stop` (what a fallback to a whole-file restore needs)."""

    def __init__(self, first: bytes, rest: BinaryIO) -> None:
        self._first: memoryview | None = memoryview(first)
        self._rest = rest
        self.kept: list[bytes] | None = []

    def read(self, n: int = -1) -> bytes:
        if self._first is not None:
            take = len(self._first) if n < 0 else n
            data = bytes(self._first[:take])
            self._first = self._first[take:] if take < len(self._first) else None
            if n < 0:
                data += self._rest.read()
        else:
            data = self._rest.read(n)
        if self.kept is not None:
            self.kept.append(data)
        return data

    def stop(self) -> None:
        self.kept = None

    def chunks(self, head: bytes) -> Iterator[bytes]:
        """``head`` and then the rest, in pieces of at most 1 MiB."""
        if head:
            yield head
        while data := self.read(_READ):
            yield data


def _read_upto(src: BinaryIO, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` + 1 bytes of ``src`` and whether that was all of it."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        data = src.read(min(_READ * 4, limit + 1 - size))
        if not data:
            return b"".join(parts), True
        parts.append(data)
        size += len(data)
    return b"".join(parts), False


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
        size = item.length
        # one huge multi-frame must not flush every other instance (nor double the memory)
        if size > self.cap // 8 or not item.sop_uid:
            return
        with self._lock:
            old = self._items.pop(item.sop_uid, None)
            if old is not None:
                self.size -= old.length
            self._items[item.sop_uid] = item
            self.size += size
            while self.size > self.cap:
                _, evicted = self._items.popitem(last=False)
                self.size -= evicted.length

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.size = 0


class Restorer:
    """Turns archive bytes into what a reader may see (or a :class:`RefusedInstance`)."""

    def __init__(self, identities: Sequence[str], cache_bytes: int, max_concurrent: int,
                 stream_above: int = STREAM_ABOVE) -> None:  # fmt: skip
        self._identities = list(identities)
        self.stream_above = stream_above
        self.cache = InstanceCache(cache_bytes)
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def restore(self, raw: bytes) -> Restored:
        """Restore one whole instance (verified before this returns)."""
        # ScanFort's block decides; one pass over the leading elements finds it (and the
        # UIDs) without parsing the file. Whatever that pass cannot read goes the long way.
        try:
            head = dicomstream.scan_head(io.BytesIO(raw), keep=False)
        except CipherError:
            return self._restore_whole(raw)
        if head.marker is None:
            # ScanFort writes its block before Pixel Data: markers in the elements before
            # it mean a damaged protected file (the pixels themselves may hold any bytes)
            header = dicomstream.pixel_value_at(head)
            region = raw if header is None else raw[:header]
            if not head.sop_uid or any(m in region for m in _MARKERS):
                return self._restore_whole(raw)  # no UID, or markers outside the block
            return Restored(raw, False, head.study_uid, head.series_uid, head.sop_uid)
        if head.marker != dicomfile.FORMAT_MARKER:
            return self._restore_whole(raw)  # version 1
        with self._slots:
            try:
                # whole: all the pieces are taken before any is used, so the original's
                # SHA-256 (checked after the last one) authenticates the enciphered value
                # too, and its own digest pass is left out (SPEC §2.4, "Reading").
                opened = dicomstream.open_v2(head, self._identities, lambda n: io.BytesIO(),
                                             whole=True)  # fmt: skip
                # Those that are views of ``raw`` (clear bytes between enciphered units)
                # are copied: the ciphertext is not kept with the result.
                pieces = [bytes(piece) if isinstance(piece, memoryview) and piece.obj is raw
                          else piece for piece in opened.pieces()]  # fmt: skip
            except CipherError as exc:
                raise _refusal(exc, head.uids) from None
        item = Restored(pieces, True, *opened.uids)
        study, series, sop = opened.uids if opened.uids[2] else read_uids(item.data)
        visible = (head.study_uid, head.series_uid, head.sop_uid)
        item.study_uid, item.series_uid, item.sop_uid = study, series, sop
        item.archive_uids = None if visible == (study, series, sop) else visible
        return item

    def open_stream(self, src: BinaryIO,
                    spool: Callable[[int], BinaryIO] | None = None) -> Restored | Streamed:  # fmt: skip
        """One instance read from ``src``: whole up to :data:`STREAM_ABOVE` bytes (restored
        and verified), else :class:`Streamed` (see :meth:`take`)."""
        taken = self.take(src, spool)
        return self.restore(taken) if isinstance(taken, bytes) else taken

    def take(self, src: BinaryIO,
             spool: Callable[[int], BinaryIO] | None = None) -> bytes | Streamed:  # fmt: skip
        """Read one instance from ``src``: its bytes when it has at most
        :data:`STREAM_ABOVE` (for :meth:`restore`), else opened as :class:`Streamed`:
        nothing decrypted is held whole, the enciphered value waits in an unlinked
        temporary file, and a passed-through one is read from ``src`` as it is sent (so it
        must be sent before ``src`` moves on). ``spool``: where the enciphered value of a
        large protected one waits (default: an unlinked temporary file in ``TMPDIR``)."""
        first, complete = _read_upto(src, self.stream_above)
        if complete:
            return first
        rec = _Recorder(first, src)
        del first
        try:
            head: dicomstream.VisibleHead | None = dicomstream.scan_head(rec, keep=False)
        except CipherError:
            head = None
        kept = b"".join(rec.kept or [])
        if (head is None or (head.marker is not None and head.marker != dicomfile.FORMAT_MARKER)
                or (head.marker is None and (not head.sop_uid or any(m in kept for m in _MARKERS)))):
            rec.stop()
            return kept + rec.read()  # taken whole: bounded by the upstream's limit
        rec.stop()
        if head.marker is None:
            return Streamed(False, head.study_uid, head.series_uid, head.sop_uid, None,
                            rec.chunks(kept))  # fmt: skip
        try:
            opened = dicomstream.open_v2(head, self._identities, spool or _spool)
        except CipherError as exc:
            raise _refusal(exc, head.uids) from None
        study, series, sop = opened.uids
        sop = sop or head.sop_uid
        visible = (head.study_uid, head.series_uid, head.sop_uid)
        return Streamed(True, study, series, sop, opened.length, opened.pieces(), opened.close,
                        opened.header(), None if visible == (study, series, sop) else visible,
                        opened)

    def _restore_whole(self, raw: bytes) -> Restored:
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
                raise _refusal(exc, list(read_uids(raw))) from None
        data = out.getvalue()
        study, series, sop = read_uids(data)
        visible = read_uids(raw)
        return Restored(data, True, study, series, sop,
                        None if visible == (study, series, sop) else visible)

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



def _spool(size: int) -> BinaryIO:
    """Where the enciphered Pixel Data of a large instance waits for its digest check:
    ciphertext only, in a file unlinked at once (``TMPDIR``)."""
    return tempfile.TemporaryFile(prefix="scanfort-gw-")


def _refusal(exc: CipherError, uids: list[str]) -> RefusedInstance:
    """The refusal of an instance the archive labels with ``uids`` (study, series, SOP)."""
    if isinstance(exc, cipher.NoIdentityMatchError):
        reason = "no site identity matches"
    elif isinstance(exc, cipher.FormatError):
        reason = "damaged protected instance"
    else:
        reason = "does not authenticate (tampered or damaged)"
    return RefusedInstance(uids[2] or "unknown", reason, uids[0], uids[1])
