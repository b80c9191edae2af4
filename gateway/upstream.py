"""DICOMweb client for the upstream archives (Orthanc's DICOMweb plugin is the test peer).

Every call has a timeout; a refused connection or a 5xx is :class:`UpstreamError` 502, a
timeout 504, a 404 :class:`UpstreamNotFound`. With several upstreams, a retrieve asks each
in turn until one has the object and a search merges their answers (first one wins per UID).
Sessions are per thread (``requests.Session`` is not documented as thread-safe).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Generator, Iterator
from typing import Any, BinaryIO, cast

import requests

from gateway.central import PREFIX as CENTRAL_PREFIX
from gateway.central import CentralSource
from gateway.errors import UpstreamError, UpstreamNotFound
from gateway.multipart import MultipartReader, Source, boundary_of

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 1024 * 1024
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"


def first_value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class _Body:
    """The body of a response read straight from its connection (:class:`Source`); a
    failure half-way is an UpstreamError."""

    def __init__(self, fp: http.client.HTTPResponse) -> None:
        self._fp = fp

    def read(self, n: int) -> bytes:
        try:
            return self._fp.read(n)
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError(504, "the archive stopped sending") from exc

    def readline(self, limit: int) -> bytes:
        try:
            return self._fp.readline(limit)
        except (OSError, http.client.HTTPException) as exc:
            raise UpstreamError(504, "the archive stopped sending") from exc


def _body(resp: requests.Response) -> Source | None:
    """The body as a buffered stream, when nothing stands between it and the connection
    (no content coding for urllib3 to undo); None otherwise."""
    fp = getattr(resp.raw, "_fp", None)
    coding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if not isinstance(fp, http.client.HTTPResponse) or coding not in ("", "identity"):
        return None
    return _Body(fp)


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives; a failure half-way is an UpstreamError wherever it is read."""
    try:
        yield from resp.iter_content(_CHUNK)
    except requests.RequestException as exc:
        raise UpstreamError(504, "the archive stopped sending") from exc


class Upstream:
    """One or more DICOMweb roots (``…/dicom-web``) behind one interface."""

    def __init__(self, roots: tuple[str, ...], timeout_s: float, max_instance_bytes: int,
                 central_token: str = "") -> None:  # fmt: skip
        self.roots = tuple(r.rstrip("/") for r in roots)
        self.timeout_s = timeout_s
        self.max_instance_bytes = max_instance_bytes
        self._local = threading.local()
        self.central = {
            r: CentralSource(r, central_token, timeout_s, self._session)
            for r in self.roots if r.startswith(CENTRAL_PREFIX)
        }  # fmt: skip

    @property
    def can_search_patients(self) -> bool:
        """False when an upstream (the central) holds no patient attributes at all."""
        return not self.central

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _get(self, root: str, path: str, accept: str, params: Any = None,
             stream: bool = False) -> requests.Response:  # fmt: skip
        try:
            resp = self._session().get(
                root + path, params=params, headers={"Accept": accept},
                timeout=(min(5.0, self.timeout_s), self.timeout_s), stream=stream,
            )  # fmt: skip
        except requests.Timeout as exc:
            raise UpstreamError(504, "the archive did not answer in time") from exc
        except requests.RequestException as exc:
            raise UpstreamError(502, "the archive cannot be reached") from exc
        if resp.status_code == 404:
            resp.close()
            raise UpstreamNotFound(path)
        if resp.status_code == 204:
            return resp
        if resp.status_code >= 400:
            resp.close()
            raise UpstreamError(502, f"the archive answered {resp.status_code}")
        return resp

    # -- QIDO ------------------------------------------------------------------------------

    def search(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """QIDO-RS ``path`` (``/studies``, ``/studies/{uid}/series``…) on every upstream."""
        merged: dict[str, dict[str, Any]] = {}
        found = False
        for root in self.roots:
            if root in self.central:
                for item in self.central[root].search(path, params):
                    key = first_value(item, SOP_UID) or first_value(item, SERIES_UID)
                    merged.setdefault(key or first_value(item, STUDY_UID), item)
                found = True
                continue
            try:
                resp = self._get(root, path, "application/dicom+json", params)
            except UpstreamNotFound:
                continue
            found = True
            if resp.status_code == 204 or not resp.content:
                continue
            try:
                items = resp.json()
            except ValueError as exc:
                raise UpstreamError(502, "the archive answered invalid JSON") from exc
            for item in items if isinstance(items, list) else []:
                key = first_value(item, SOP_UID) or first_value(item, SERIES_UID)
                key = key or first_value(item, STUDY_UID)
                merged.setdefault(key or str(len(merged)), item)
        if not found and len(self.roots) > 0:
            return []
        return list(merged.values())

    def all_instances(self, study: str) -> list[tuple[str, str]]:
        """``(series_uid, sop_uid)`` of every instance of ``study``, series by series."""
        out: list[tuple[str, str]] = []
        for series in self.search(f"/studies/{study}/series"):
            se = first_value(series, SERIES_UID)
            for inst in self.search(f"/studies/{study}/series/{se}/instances"):
                out.append((se, first_value(inst, SOP_UID)))
        return out

    # -- WADO ------------------------------------------------------------------------------

    def iter_streams(self, path: str) -> Generator[BinaryIO, None, None]:
        """The DICOM files of a study, series or instance retrieve, each a stream read
        from the archive as it arrives; read each before asking for the next one."""
        last: Exception = UpstreamNotFound(path)
        for root in self.roots:
            if root in self.central:
                try:
                    yield from self.central[root].iter_streams(path)
                except UpstreamNotFound as exc:
                    last = exc
                    continue
                return
            try:
                resp = self._get(root, path, DICOM_ACCEPT, stream=True)
            except UpstreamNotFound as exc:
                last = exc
                continue
            try:
                boundary = boundary_of(resp.headers.get("Content-Type", ""))
                reader = MultipartReader(_chunks(resp), boundary, self.max_instance_bytes,
                                         _body(resp))  # fmt: skip
                while reader.next_part():
                    yield cast(BinaryIO, reader)
            finally:
                resp.close()
            return
        raise last

    def iter_instances(self, path: str) -> Iterator[bytes]:
        """The DICOM files of a study, series or instance retrieve, one at a time."""
        for stream in self.iter_streams(path):
            yield stream.read()

    def instance(self, study: str, series: str, sop: str) -> bytes:
        for data in self.iter_instances(f"/studies/{study}/series/{series}/instances/{sop}"):
            return data
        raise UpstreamNotFound(sop)
