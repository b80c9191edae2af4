"""The index of real patient attributes, sealed at rest, rebuilt from the upstream on demand.

The archive only holds pseudonyms, so QIDO-RS by real PatientID, AccessionNumber or name
runs against this index: one sealed row per instance (its non-bulk attributes as DICOM
JSON, restored by the cipher) keyed by its UIDs. A sync compares the upstream's studies
and instance counts with the index and (re)indexes each study that differs, by retrieving
and restoring it. Rows are opened once per process and kept in memory (the trusted zone's
RAM, like the decrypted cache), never written anywhere in clear.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pydicom
from cryptography.exceptions import InvalidTag
from pydicom.dataset import Dataset

from gateway import dicomdata
from gateway.errors import RefusedInstance, UpstreamNotFound
from gateway.restore import Restored, Restorer, Streamed
from gateway.security import IndexSeal
from gateway.store import Store
from gateway.upstream import SERIES_UID, SOP_UID, STUDY_UID, Upstream, first_value

NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
PIXEL_DATA = "7FE00010"
INSTANCE_AVAILABILITY = "00080056"

Row = dict[str, Any]  # tag (8 hex digits) → DICOM JSON attribute


#: Stands for the instance's WADO-RS URL in the BulkDataURI values of an index row.
INSTANCE_URL = "@instance@"


def index_row(ds: Dataset) -> Row:
    """The instance's metadata JSON (bulk data as BulkDataURI relative to ``INSTANCE_URL``).

    The same row answers QIDO-RS (matching, includefield) and WADO-RS metadata, so a viewer
    gets a series' metadata without a single pixel being decrypted again.
    """
    return dicomdata.metadata_json(ds, INSTANCE_URL)


def metadata_of(row: Row, instance_url: str) -> Row:
    """An index row as WADO-RS metadata of the instance at ``instance_url``."""
    out: Row = {}
    for tag, attr in row.items():
        uri = attr.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith(INSTANCE_URL):
            attr = {**attr, "BulkDataURI": instance_url + uri[len(INSTANCE_URL) :]}
        out[tag] = attr
    return out


class Index:
    """Search rows for QIDO-RS, kept in step with the upstream."""

    def __init__(
        self,
        store: Store,
        seal: IndexSeal,
        upstream: Upstream,
        restorer: Restorer,
        on_study_indexed: Callable[[str, int, list[RefusedInstance]], None] | None = None,
        full_sync_interval_s: float = 0.0,
    ) -> None:
        self._store = store
        self._seal = seal
        self._upstream = upstream
        self._restorer = restorer
        self._on_study = on_study_indexed
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._rows: dict[str, Row] | None = None  # instance UID (the archive's) → row
        # the original UIDs (in the rows, what readers see) → the archive's, where they
        # differ: a study protected without retain-uids is stored under keyed pseudonyms
        self._to_archive: dict[str, str] = {}
        # study UID → instances refused (or too large to index) at its last sync
        self._refused: dict[str, int] = {}
        # study UID → rows of its refused instances: UIDs only, InstanceAvailability
        # UNAVAILABLE, so a viewer lists them and shows the error the retrieve answers
        self._refused_rows: dict[str, list[Row]] = {}
        self.full_sync_interval_s = full_sync_interval_s
        self._last_full_sync = -1e18

    # -- rows ------------------------------------------------------------------------------

    def _load(self) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        self._to_archive = {}
        for uid, study, series, sealed in self._store.index_rows():
            try:
                rows[uid] = row = json.loads(self._seal.open(uid, sealed))
            except (InvalidTag, ValueError):
                continue  # a row sealed under another identity or damaged: reindexed by sync
            self._map(row, (study, series, uid))
        return rows

    def _map(self, row: Row, archive: tuple[str, str, str]) -> None:
        for tag, theirs in zip((STUDY_UID, SERIES_UID, SOP_UID), archive, strict=True):
            ours = first_value(row, tag)
            if ours and ours != theirs:
                self._to_archive[ours] = theirs

    def archive_path(self, study: str, series: str = "", sop: str = "") -> str:
        """The upstream path of a study, series or instance a reader names by its original
        UIDs (unchanged where the archive uses the same ones, or where they are unknown)."""
        with self._lock:
            if self._rows is None:
                self._rows = self._load()
            get = self._to_archive.get
            path = f"/studies/{get(study, study)}"
            if series:
                path += f"/series/{get(series, series)}"
            if sop:
                path += f"/instances/{get(sop, sop)}"
        return path

    def archive_study(self, study: str) -> str:
        return self.archive_path(study).removeprefix("/studies/")

    def rows(self) -> list[Row]:
        with self._lock:
            if self._rows is None:
                self._rows = self._load()
            return list(self._rows.values())

    def refused_rows(self) -> list[Row]:
        """Instance-level rows of the instances refused at the last sync of their study."""
        return [row for rows in list(self._refused_rows.values()) for row in rows]

    def has(self, sop_uid: str) -> bool:
        with self._lock:
            if self._rows is None:
                self._rows = self._load()
            return sop_uid in self._rows or sop_uid in self._to_archive

    def record(self, items: Sequence[Restored | Streamed], *, only_new: bool = False) -> None:
        """Index restored instances (called after retrieves and by the sync); a large one
        by the header of its original (everything but the Pixel Data value)."""
        if only_new:
            items = [i for i in items if not self.has(i.sop_uid)]
        if not items:
            return
        prepared: list[tuple[str, str, str, bytes]] = []
        rows: dict[str, Row] = {}
        for item in items:
            if isinstance(item, Restored):
                row = index_row(dicomdata.parse(item.data))
            else:
                ds = pydicom.dcmread(io.BytesIO(item.header or b""), stop_before_pixels=True)
                row = index_row(ds)
                bits = int(ds.get("BitsAllocated", 8) or 8)
                row[PIXEL_DATA] = {"vr": "OW" if bits > 8 else "OB",
                                   "BulkDataURI": f"{INSTANCE_URL}/bulkdata/{PIXEL_DATA}"}
            study, series, sop = item.archive  # rows are stored under the archive's UIDs
            rows[sop] = row
            plain = json.dumps(row, separators=(",", ":")).encode("utf-8")
            sealed = self._seal.seal(sop, plain)
            prepared.append((sop, study, series, sealed))
        self._store.put_index(prepared)
        with self._lock:
            if self._rows is not None:
                self._rows.update(rows)
            for (study, series, sop), row in zip((i.archive for i in items), rows.values(),
                                                 strict=True):  # fmt: skip
                self._map(row, (study, series, sop))

    def forget(self) -> None:
        """Drop the in-memory rows (after another process changed the table)."""
        with self._lock:
            self._rows = None

    # -- sync ------------------------------------------------------------------------------

    def series_rows(self, study_uid: str, series_uid: str | None) -> list[Row]:
        """Rows of one series (or of a study), in instance-number order."""
        def key(r: Row) -> tuple[str, int, str]:
            num = (r.get("00200013", {}).get("Value") or [0])[0]
            return (first_value(r, SERIES_UID), int(num or 0), first_value(r, SOP_UID))

        return sorted(
            (r for r in self.rows() if first_value(r, STUDY_UID) == study_uid
             and (series_uid is None or first_value(r, SERIES_UID) == series_uid)),
            key=key,
        )  # fmt: skip

    def upstream_studies(self, only_study: str | None = None) -> dict[str, int]:
        """Study UID → instance count, as the upstream reports them (paged)."""
        out: dict[str, int] = {}
        offset, page = 0, 1000
        while True:
            params = {"limit": str(page), "offset": str(offset),
                      "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES}  # fmt: skip
            if only_study:
                params["StudyInstanceUID"] = only_study
            items = self._upstream.search("/studies", params)
            for item in items:
                uid = first_value(item, STUDY_UID)
                try:
                    out[uid] = int(first_value(item, NUMBER_OF_STUDY_RELATED_INSTANCES) or -1)
                except ValueError:
                    out[uid] = -1
            if len(items) < page:
                return out
            offset += page

    def sync(self, only_study: str | None = None, *, force: bool = False) -> int:
        """Index every study whose instance count differs from the upstream; return how many.

        A sync of the whole archive (``only_study`` None) lists every upstream study, so it
        runs at most once per ``full_sync_interval_s`` unless ``force``d; a sync of one
        study always runs (one small query).
        """
        with self._sync_lock:
            now = time.monotonic()
            if only_study is None and not force:
                if now - self._last_full_sync < self.full_sync_interval_s:
                    return 0
                self._last_full_sync = now
            upstream = self.upstream_studies(only_study)
            known = self._store.index_counts()
            todo = [
                uid
                for uid, count in upstream.items()
                if (only_study is None or uid == only_study)
                and known.get(uid, 0) + self._refused.get(uid, 0) != count
            ]
            gone = [u for u in set(known) - set(upstream) if only_study in (None, u)]
            if todo or gone:
                self.forget()
            for uid in todo:
                self.index_study(uid)
            for uid in gone:
                self._store.clear_index(uid)
            if todo or gone:
                self.forget()
            return len(todo)

    def index_study(self, study_uid: str) -> None:
        refused: list[RefusedInstance] = []
        batch: list[Restored | Streamed] = []
        count = skipped = 0
        try:
            for stream in self._upstream.iter_streams(f"/studies/{study_uid}"):
                try:
                    taken = self._restorer.take(stream)
                    item = self._restorer.restore(taken) if isinstance(taken, bytes) else taken
                except RefusedInstance as exc:
                    refused.append(exc)
                    continue
                if isinstance(item, Streamed):
                    # a large instance: its enciphered value matched its digest and its
                    # header comes from the authenticated blob; it is not deciphered here
                    item.close()
                    if item.header is None:
                        skipped += 1  # a large deflated or passed-through one: not indexed
                        continue
                else:
                    self._restorer.cache.put(item)
                batch.append(item)
                count += 1
                if len(batch) >= 50:
                    self.record(batch)
                    batch = []
        except UpstreamNotFound:
            pass
        self.record(batch)
        self._refused[study_uid] = len(refused) + skipped
        self._refused_rows[study_uid] = [_unavailable(study_uid, r) for r in refused
                                         if r.sop_instance_uid != "unknown"]
        if self._on_study is not None:
            self._on_study(study_uid, count, refused)


def _unavailable(study_uid: str, refused: RefusedInstance) -> Row:
    def ui(value: str) -> dict[str, Any]:
        return {"vr": "UI", "Value": [value]}

    return {STUDY_UID: ui(refused.study_uid or study_uid), SERIES_UID: ui(refused.series_uid),
            SOP_UID: ui(refused.sop_instance_uid),
            INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["UNAVAILABLE"]}}  # fmt: skip
