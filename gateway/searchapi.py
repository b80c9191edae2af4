"""QIDO-RS endpoints: studies, series and instances, answered from the sealed index.

Each search first brings the index in step with the upstream (a study whose instance
count changed is reindexed), then matches. The audit entry of a search names the study
UID when the query was scoped to one and counts the results; search terms themselves
(patient IDs, names) are never written to the audit.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request, Response

from gateway import qido
from gateway.audit import AuditEvent
from gateway.auth import require
from gateway.context import Gateway, client_of, get_gateway
from gateway.errors import UpstreamError
from gateway.upstream import first_value
from gateway.wado import dicomweb_root

router = APIRouter(prefix="/dicom-web")


def _answer(request: Request, level: str, study: str = "", series: str = "") -> Response:
    p = require(request, "reader", study=study, series=series)
    gw: Gateway = get_gateway(request)
    try:
        q = qido.parse_query(level, request.query_params.multi_items())
    except qido.QueryError as exc:
        raise HTTPException(400, str(exc)) from None
    if study:
        q.filters[qido.STUDY_UID] = study
    if series:
        q.filters[qido.SERIES_UID] = series
    try:
        scoped = study or q.filters.get(qido.STUDY_UID)
        through_pseudonyms = None if scoped else pseudonym_scope(gw, q)
        if through_pseudonyms is not None:
            for uid in through_pseudonyms:
                gw.index.sync(only_study=uid)
        else:
            gw.index.sync(only_study=gw.index.archive_study(scoped) if scoped else None)
    except UpstreamError as exc:
        gw.audit([AuditEvent(p.username, client_of(request), "search", "failed", study, series,
                             detail=str(exc))])  # fmt: skip
        raise HTTPException(exc.status, str(exc)) from None
    rows = gw.index.rows()
    if level == qido.INSTANCE:  # refused instances too, marked UNAVAILABLE (UIDs only)
        rows += gw.index.refused_rows()
    results = qido.search(rows, q, dicomweb_root(request))
    gw.audit([AuditEvent(p.username, client_of(request), "search", "ok", study, series,
                         detail=f"{level} level, {len(results)} results")])  # fmt: skip
    if not results:
        return Response(status_code=204)
    return Response(json.dumps(results), media_type="application/dicom+json")


def pseudonym_scope(gw: Gateway, q: qido.Query) -> list[str] | None:
    """Study UIDs the upstream holds for an exact PatientID/AccessionNumber, via pseudonyms.

    With the site's pseudonym secret (DICOM mode v2), an exact real identifier maps to the
    pseudonym the archive stores, so only the matching studies need indexing: a search on a
    large archive does not walk all of it. None when that shortcut does not apply.
    """
    secret = gw.pseudonyms
    if secret is None or not gw.upstream.can_search_patients:
        return None
    issuer = q.filters.get("00100021", "")
    params: dict[str, str] = {}
    pid, acc = q.filters.get("00100020", ""), q.filters.get("00080050", "")
    if pid and not any(c in pid for c in "*?\\"):
        params["PatientID"] = secret.patient_id(pid, issuer)
    elif acc and not any(c in acc for c in "*?\\"):
        params["AccessionNumber"] = secret.accession(acc)
    else:
        return None
    found = gw.upstream.search("/studies", params)
    return [first_value(item, qido.STUDY_UID) for item in found]


@router.get("/studies")
def search_studies(request: Request) -> Response:
    return _answer(request, qido.STUDY)


@router.get("/series")
def search_all_series(request: Request) -> Response:
    return _answer(request, qido.SERIES)


@router.get("/instances")
def search_all_instances(request: Request) -> Response:
    return _answer(request, qido.INSTANCE)


@router.get("/studies/{study}/series")
def search_series(study: str, request: Request) -> Response:
    return _answer(request, qido.SERIES, study)


@router.get("/studies/{study}/instances")
def search_study_instances(study: str, request: Request) -> Response:
    return _answer(request, qido.INSTANCE, study)


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(study: str, series: str, request: Request) -> Response:
    return _answer(request, qido.INSTANCE, study, series)
