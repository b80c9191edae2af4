"""Pages for people: login, logout, the audit page and CSV, and the hosted OHIF viewer.

The viewer (``viewer_dir``, an ``@ohif/app`` ``dist/``) is served on the gateway's own
origin with a generated ``/app-config.js`` pointing at ``/dicom-web``: no CORS, and the
session cookie (HttpOnly, SameSite=Lax) authenticates every DICOMweb request it makes.
"""

from __future__ import annotations

import html
import json
import mimetypes
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse

from gateway import audit
from gateway.audit import AuditEvent
from gateway.auth import SESSION_COOKIE, authenticate, login_delay, require
from gateway.context import client_of, get_gateway
from gateway.errors import AuditChainError

router = APIRouter()

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{title} · ScanFort gateway</title><style>
body{{font:15px system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} .bad{{color:#b00}}
form{{max-width:22em}} input{{display:block;margin:.3em 0 1em;width:100%}}</style></head>
<body><h1>{title}</h1>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), body=body), status_code=status)


def _safe_next(value: str) -> str:
    """Only a path on this site ("//host" and "/\\host" would leave it)."""
    ok = value.startswith("/") and not value.startswith(("//", "/\\")) and "\n" not in value
    return value if ok else "/"


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/login")
def login_form(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
    msg = f'<p class="bad">{html.escape(error)}</p>' if error else ""
    body = (
        f'{msg}<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{html.escape(_safe_next(next))}">'
        '<label>User <input name="username" autocomplete="username" required></label>'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button type="submit">Log in</button></form>'
    )
    return _page("Log in", body)


@router.post("/login")
def login(
    request: Request, username: str = Form(...), password: str = Form(...), next: str = Form("/")
) -> Response:
    gw = get_gateway(request)
    principal, recent = gw.store.check_login(username, password)
    client = client_of(request)
    if principal is None:
        login_delay(gw, recent)
        gw.audit([AuditEvent(username, client, "login", "failed", detail="form")])
        target = f"/login?error={quote('wrong username or password')}&next={quote(next)}"
        return RedirectResponse(target, status_code=303)
    token = gw.store.create_token(username, gw.settings.session_lifetime_s, "session")
    gw.audit([AuditEvent(username, client, "login", "ok", detail="form")])
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(
        SESSION_COOKIE, token, max_age=int(gw.settings.session_lifetime_s), httponly=True,
        secure=gw.settings.cookie_secure, samesite="lax", path="/",
    )  # fmt: skip
    return resp


@router.post("/logout")
def logout(request: Request) -> Response:
    gw = get_gateway(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        principal = gw.store.authenticate_token(token, "session")
        gw.store.delete_token(token)
        if principal:
            gw.audit([AuditEvent(principal.username, client_of(request), "logout", "ok")])
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/audit")
def audit_page(request: Request, limit: int = 200) -> HTMLResponse:
    p = require(request, "auditor")
    gw = get_gateway(request)
    try:
        count = audit.verify_chain(gw.store.iter_audit())
        status = f"<p>Chain verified: {count} entries, unbroken.</p>"
    except AuditChainError as exc:
        status = f'<p class="bad">Chain broken: {html.escape(str(exc))}</p>'
    entries = gw.store.audit_entries(limit=max(1, min(limit, 5000)), newest_first=True)
    gw.audit([AuditEvent(p.username, client_of(request), "audit-view", "ok")])
    head = "".join(f"<th>{html.escape(f)}</th>" for f in audit.CSV_FIELDS[:-1])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            e.seq, audit.iso_time(e.at), e.username, e.client, e.operation, e.study_uid,
            e.series_uid, e.instance_uid, e.outcome, e.detail, e.process)) + "</tr>"
        for e in entries
    )  # fmt: skip
    body = f'{status}<p><a href="/audit.csv">CSV export</a></p><table><tr>{head}</tr>{rows}</table>'
    return _page("Audit", body)


@router.get("/audit.csv")
def audit_csv(request: Request) -> PlainTextResponse:
    p = require(request, "auditor")
    gw = get_gateway(request)
    gw.audit([AuditEvent(p.username, client_of(request), "audit-view", "ok", detail="csv")])
    text = audit.to_csv(gw.store.iter_audit())
    return PlainTextResponse(
        text, media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="scanfort-gateway-audit.csv"'},
    )  # fmt: skip


@router.post("/admin/cache/clear")
def clear_cache(request: Request) -> dict[str, int]:
    """Drop every decrypted instance from memory now (admin; e.g. at the end of a session),
    and the staged ciphertext of large instances with the opened blobs (image keys) kept
    beside it; a staged entry a request is still reading goes when that request ends."""
    p = require(request, "admin")
    gw = get_gateway(request)
    dropped = gw.restorer.cache.size
    gw.restorer.cache.clear()
    staged = 0
    if gw.stages is not None:
        staged = gw.stages.size
        gw.stages.clear()
    gw.audit([AuditEvent(p.username, client_of(request), "cache-clear", "ok")])
    return {"dropped_bytes": dropped, "dropped_staged_bytes": staged}


# --------------------------------------------------------------------------- the viewer


def app_config_js(origin_expr: str = "window.location.origin") -> str:
    """OHIF's ``window.config``: one DICOMweb data source, this gateway (see the notes)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "scanfort",
        "configuration": {
            "friendlyName": "ScanFort gateway",
            "name": "scanfort",
            "qidoRoot": "@ORIGIN@/dicom-web",
            "wadoRoot": "@ORIGIN@/dicom-web",
            "wadoUriRoot": "@ORIGIN@/wado",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        },
    }
    config = {
        "routerBasename": "/",
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showLoadingIndicator": True,
        "extensions": [],
        "modes": [],
        "defaultDataSourceName": "scanfort",
        "dataSources": [source],
    }
    text = json.dumps(config, indent=1).replace('"@ORIGIN@', f'{origin_expr} + "')
    return f"window.config = {text};\n"


def _viewer_file(root: Path, path: str) -> Path:
    candidate = (root / path).resolve()
    if path and root in candidate.parents and candidate.is_file():
        return candidate
    return root / "index.html"


def viewer_response(request: Request, path: str) -> Response:
    gw = get_gateway(request)
    if not gw.settings.viewer_dir:
        raise HTTPException(404, "no viewer configured (scanfort gateway run --viewer DIR)")
    try:
        authenticate(request)
    except HTTPException:
        return RedirectResponse(f"/login?next={quote('/' + path)}", status_code=303)
    if path == "app-config.js":
        return Response(app_config_js(), media_type="application/javascript")
    root = Path(gw.settings.viewer_dir).resolve()
    target = _viewer_file(root, path)
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if target.suffix == ".wasm":
        ctype = "application/wasm"
    headers = {"Cache-Control": "no-cache" if target.name == "index.html" else "max-age=3600"}
    return FileResponse(target, media_type=ctype, headers=headers)
