"""The central service's object store as an upstream (``scanfort-central+https://host:port``).

Agents with a ``central`` destination upload their protected instances there with the
instance's UIDs; a gateway holding a reader token (``scanfort central reader-token``) lists
them by UID and fetches the encrypted bytes, which it restores like any other archive's.
The central has UIDs only, so it answers study/series/instance listings by UID but cannot
search by patient (the gateway's index does that).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

import requests
import urllib3

from gateway.errors import UpstreamError, UpstreamNotFound

PREFIX = "scanfort-central+"
_PATH_RE = re.compile(r"/studies/([0-9.]+)(?:/series/([0-9.]+)(?:/instances/([0-9.]+))?)?")


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


class CentralSource:
    """Listings and object bytes from ``/api/v1/reader`` of a central service."""

    def __init__(self, url: str, token: str, timeout_s: float,
                 session: Callable[[], requests.Session]) -> None:  # fmt: skip
        self.base = url.removeprefix(PREFIX).rstrip("/") + "/api/v1/reader"
        self.token = token
        self.timeout_s = timeout_s
        self._session = session

    def _get(self, path: str, params: dict[str, str] | None = None,
             stream: bool = False) -> requests.Response:  # fmt: skip
        try:
            resp = self._session().get(
                self.base + path, params=params, timeout=(min(5.0, self.timeout_s), self.timeout_s),
                headers={"Authorization": f"Bearer {self.token}"}, stream=stream,
            )  # fmt: skip
        except requests.Timeout as exc:
            raise UpstreamError(504, "the central service did not answer in time") from exc
        except requests.RequestException as exc:
            raise UpstreamError(502, "the central service cannot be reached") from exc
        if resp.status_code == 404:
            resp.close()
            raise UpstreamNotFound(path)
        if resp.status_code >= 400:
            resp.close()
            raise UpstreamError(502, f"the central service answered {resp.status_code}")
        return resp

    def _objects(self, study: str | None = None, series: str | None = None,
                 sop: str | None = None) -> list[dict[str, str]]:  # fmt: skip
        params = {k: v for k, v in (("study", study), ("series", series), ("sop", sop)) if v}
        found = self._get("/objects", params).json()
        return [o for o in found if isinstance(o, dict)]

    def search(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        params = params or {}
        if any(k in params for k in ("PatientID", "AccessionNumber", "PatientName")):
            return []  # the central has no patient attributes, by design
        if path == "/studies":
            objects = self._objects(study=params.get("StudyInstanceUID") or None)
            counts: dict[str, int] = {}
            for o in objects:
                counts[o["study_uid"]] = counts.get(o["study_uid"], 0) + 1
            items = [{"0020000D": _ui(uid), "00201208": {"vr": "IS", "Value": [n]}}
                     for uid, n in sorted(counts.items())]  # fmt: skip
            offset = int(params.get("offset", "0") or 0)
            limit = int(params.get("limit", "0") or 0) or None
            return items[offset : None if limit is None else offset + limit]
        match = _PATH_RE.fullmatch(path.removesuffix("/series").removesuffix("/instances"))
        if not match:
            return []
        study, series, _ = match.groups()
        objects = self._objects(study=study, series=series)
        if path.endswith("/series") and series is None:
            seen = sorted({o["series_uid"] for o in objects})
            return [{"0020000D": _ui(study), "0020000E": _ui(s)} for s in seen]
        return [{"0020000D": _ui(o["study_uid"]), "0020000E": _ui(o["series_uid"]),
                 "00080018": _ui(o["sop_uid"])} for o in objects]  # fmt: skip

    def iter_streams(self, path: str) -> Iterator[BinaryIO]:
        """Each object of ``path`` as a stream of its (encrypted) bytes, read as they arrive."""
        match = _PATH_RE.fullmatch(path)
        if not match:
            raise UpstreamNotFound(path)
        objects = self._objects(*match.groups())
        if not objects:
            raise UpstreamNotFound(path)
        for o in objects:
            resp = self._get(f"/objects/{o['sha256']}", stream=True)
            try:
                yield cast(BinaryIO, _Body(resp))
            finally:
                resp.close()


class _Body:
    """``read(n)`` of a response body; a failure half-way is an UpstreamError."""

    def __init__(self, resp: requests.Response) -> None:
        self._raw = resp.raw

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._raw.read(None if n < 0 else n, decode_content=True)
        except (requests.RequestException, OSError, urllib3.exceptions.HTTPError) as exc:
            raise UpstreamError(504, "the central service stopped sending") from exc
        return data
