"""Server-rendered dashboard: login, fleet overview, agent pages, enrollment tokens.

Sessions live in the database (any central process can serve any request). Every form
carries a CSRF token: the session's for logged-in forms, a double-submit cookie for the
login form. A failed login answers only after a delay that doubles with recent failures.
Pages need a role (``service.users``): viewers read, operators act on agents and
quarantine, admins manage tokens and users; every change is written to the audit log.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from service import fleet, status, throttle, users
from service.chart import hourly_bars_svg, line_svg
from service.context import AppContext, Ctx
from service.security import tokens_equal
from service.store import SessionInfo

SESSION_COOKIE = "sf_session"
LOGIN_CSRF_COOKIE = "sf_login_csrf"

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.filters["age"] = status.format_age
templates.env.filters["bytes"] = status.format_bytes
templates.env.filters["clock"] = lambda t: (
    "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
)

router = APIRouter(include_in_schema=False)

_sleep = asyncio.sleep  # tests replace it to observe the failed-login delay


def _secure(request: Request, ctx: AppContext) -> bool:
    return ctx.settings.cookie_secure or request.url.scheme == "https"


async def _session(request: Request, ctx: AppContext) -> SessionInfo | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 256:
        return None
    return await run_in_threadpool(ctx.store.get_session, token)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


async def _check_csrf(request: Request, session: SessionInfo) -> dict[str, Any] | None:
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not tokens_equal(sent, session.csrf_token):
        return None
    return dict(form)


def _forbidden() -> HTMLResponse:
    return HTMLResponse(
        "<h1>403</h1><p>form expired or forged (CSRF check failed); reload the page</p>",
        status_code=403,
    )


def _not_allowed(session: SessionInfo, needed: str) -> HTMLResponse:
    return HTMLResponse(
        f"<h1>403</h1><p>this needs the {needed} role; {session.username} is "
        f"{session.role}</p>",
        status_code=403,
    )


async def _page_session(
    request: Request, ctx: AppContext, needed: str = "viewer"
) -> SessionInfo | Response:
    """The session of a user allowed to see this page, or the response that refuses."""
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
    if not users.allows(session.role, needed):
        return _not_allowed(session, needed)
    return session


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    session = context.get("session")
    if isinstance(session, SessionInfo):
        context = {**context, "can": lambda needed: users.allows(session.role, needed)}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- login ------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, ctx: Ctx, next: str | None = None) -> Response:
    if await _session(request, ctx) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    csrf = secrets.token_urlsafe(24)
    response = _render(
        request, "login.html", {"csrf": csrf, "next": _safe_next(next), "error": None}
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=_secure(request, ctx)
    )
    return response


def _attempt_login(
    ctx: AppContext, username: str, password: str, address: str
) -> tuple[bool, str, int]:
    """(ok, error text, failures before this attempt), counted before the password check."""
    settings, store = ctx.settings, ctx.store
    account = throttle.record_attempt(store, throttle.user_key(username), settings.login_window_s)
    client = throttle.record_attempt(store, throttle.ip_key(address), settings.login_window_s)
    recent = max(account.previous_failures, client.previous_failures)
    if account.locked or account.previous_failures >= settings.login_lockout_after:
        throttle.lock(store, throttle.user_key(username))
        return False, "too many failed logins: account locked; an admin can unlock it", recent
    if client.previous_failures >= settings.login_address_limit:
        return False, "too many failed logins from this address; try again later", recent
    ok, _ = store.check_login(username, password)
    if not ok:
        return False, "wrong user name or password", recent
    throttle.succeeded(store, throttle.user_key(username))
    throttle.forgive_one(store, throttle.ip_key(address))
    return True, "", 0


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request, ctx: Ctx) -> Response:
    form = await request.form()
    username, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:1024]
    sent, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    next_url = _safe_next(str(form.get("next", "/")))
    if not cookie or not tokens_equal(sent, cookie):
        return _forbidden()
    ok, error, recent = await run_in_threadpool(
        _attempt_login, ctx, username, password, request.client.host if request.client else "?"
    )
    if not ok:
        ctx.counters.inc("login_failures")
        # Slow down guessing: the answer comes only after the delay, doubling per recent failure.
        await _sleep(ctx.settings.login_failure_delay_s * 2 ** min(recent, 3))
        return _render(
            request,
            "login.html",
            {"csrf": cookie, "next": next_url, "error": error},
            status_code=401,
        )
    token, _csrf = await run_in_threadpool(
        ctx.store.create_session, username, ctx.settings.session_lifetime_s
    )
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=_secure(request, ctx),
        max_age=int(ctx.settings.session_lifetime_s),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is not None:
        if await _check_csrf(request, session) is None:
            return _forbidden()
        await run_in_threadpool(ctx.store.delete_session, request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- overview ---------------------------------------------------------------------------


_KINDS = ("protected", "forwarded")


def _backlog_charts(ctx: AppContext, now: float, agent_id: str | None = None) -> dict[str, Any]:
    charts: dict[str, Any] = {}
    for window, fmt in (("24h", "%H:%M"), ("7d", "%a %d")):
        data = fleet.backlog(ctx.store, now, window, agent_id)
        charts[f"depth_{window}"] = line_svg(
            data.depth, data.start, data.step_s, label=f"spool depth, {window}",
            css=f"backlog-depth-{window}", stamp_format=fmt,
        )
        hours = [None if v is None else round(v / 3600, 1) for v in data.oldest_age_s]
        charts[f"oldest_{window}"] = line_svg(
            hours, data.start, data.step_s, label=f"oldest spooled item (hours), {window}",
            unit=" h", css=f"backlog-oldest-{window}", stamp_format=fmt,
        )
    return charts


def _quarantine_counts(ctx: AppContext, agents: list[Any], now: float) -> dict[str, int]:
    """Per agent: quarantine events in 24 h, or the items it lists now if more."""
    counts = ctx.store.event_counts("quarantined", now - 86400)
    for agent in agents:
        listed = len((agent.status or {}).get("quarantine") or [])
        counts[agent.agent_id] = max(counts.get(agent.agent_id, 0), listed)
    return counts


def _overview_context(ctx: AppContext) -> dict[str, Any]:
    now = ctx.clock()
    agents = sorted(
        ctx.store.list_agents(with_status=True), key=lambda a: (a.display_name.lower(), a.agent_id)
    )
    hourly = fleet.hourly_counts(ctx.store, _KINDS, now)
    quarantines = _quarantine_counts(ctx, agents, now)
    rows: list[dict[str, Any]] = [
        {
            "agent": a,
            "state": status.agent_state(a, ctx.settings, now),
            "age": None if a.last_seen_at is None else now - a.last_seen_at,
            "protected_24h": sum(hourly.get((a.agent_id, "protected"), ())),
            "forwarded_24h": sum(hourly.get((a.agent_id, "forwarded"), ())),
            "per_hour": (hourly.get((a.agent_id, "protected")) or [0])[-1],
            "quarantined": len((a.status or {}).get("quarantine") or []),
        }
        for a in agents
    ]
    counts = {state: 0 for state in status.STATES}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    series = [(kind, fleet.fleet_hourly(hourly, kind)) for kind in _KINDS]
    return {
        "rows": rows,
        "counts": counts,
        "alerts": status.alerts_for(agents, ctx.settings, now, quarantines),
        "now": now,
        "settings": ctx.settings,
        "destinations": fleet.destination_health(agents),
        "throughput": hourly_bars_svg(series, now, "protected and forwarded per hour"),
        "totals_24h": {kind: sum(counts) for kind, counts in series},
        **_backlog_charts(ctx, now),
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx)
    if isinstance(session, Response):
        return session
    data = await run_in_threadpool(_overview_context, ctx)
    return _render(
        request, "overview.html", {**data, "session": session, "refresh_url": "/partials/overview"}
    )


@router.get("/partials/overview", response_class=HTMLResponse)
async def overview_partial(request: Request, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return HTMLResponse("", status_code=401)
    data = await run_in_threadpool(_overview_context, ctx)
    return _render(request, "_overview.html", {**data, "session": session})


# -- agent page -------------------------------------------------------------------------


def event_filters(request: Request) -> dict[str, Any]:
    """kind / severity / destination / before from the query string (bounded)."""
    q = request.query_params
    before = q.get("before", "")
    return {
        "kind": q.get("kind", "")[:32] or None,
        "severity": q.get("severity", "")[:16] or None,
        "destination": q.get("destination", "")[:64] or None,
        "before": int(before) if before.isdigit() and len(before) < 19 else None,
    }


def _agent_context(
    ctx: AppContext, agent_id: str, filters: dict[str, Any]
) -> dict[str, Any] | None:
    agent = ctx.store.get_agent(agent_id)
    if agent is None:
        return None
    now = ctx.clock()
    hourly = fleet.hourly_counts(ctx.store, _KINDS, now)
    series = [(kind, hourly.get((agent_id, kind), [0] * 24)) for kind in _KINDS]
    quarantines = _quarantine_counts(ctx, [agent], now)
    return {
        "agent": agent,
        "state": status.agent_state(agent, ctx.settings, now),
        "age": None if agent.last_seen_at is None else now - agent.last_seen_at,
        "page": fleet.events_page(ctx.store, agent_id=agent_id, **filters),
        "filters": filters,
        "options": fleet.event_filter_options(ctx.store, agent_id),
        "chart": hourly_bars_svg(series, now, "protected and forwarded per hour"),
        "scans_24h": sum(series[0][1]),
        "forwarded_24h": sum(series[1][1]),
        "alerts": status.alerts_for([agent], ctx.settings, now, quarantines),
        "status": agent.status or {},
        "destinations": fleet.destination_rows(agent),
        "quarantine": fleet.quarantine_entries([agent]),
        "now": now,
        **_backlog_charts(ctx, now, agent_id),
    }


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(request: Request, agent_id: str, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx)
    if isinstance(session, Response):
        return session
    data = await run_in_threadpool(_agent_context, ctx, agent_id, event_filters(request))
    if data is None:
        return HTMLResponse("<h1>404</h1><p>no such agent</p>", status_code=404)
    query = f"?{request.url.query}" if request.url.query else ""
    return _render(
        request,
        "agent.html",
        {
            **data,
            "session": session,
            "refresh_url": f"/partials/agents/{quote(agent_id)}{query}",
            "refresh_s": ctx.settings.refresh_interval_s,
        },
    )


@router.get("/partials/agents/{agent_id}", response_class=HTMLResponse)
async def agent_partial(request: Request, agent_id: str, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return HTMLResponse("", status_code=401)
    data = await run_in_threadpool(_agent_context, ctx, agent_id, event_filters(request))
    if data is None:
        return HTMLResponse("", status_code=404)
    return _render(request, "_agent.html", {**data, "session": session})


async def _checked_form(
    request: Request, ctx: AppContext, needed: str = "admin"
) -> tuple[SessionInfo, Any] | Response:
    """Session and CSRF-checked form of a POST by a user with role ``needed``, or a refusal."""
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
    form = await _check_csrf(request, session)
    if form is None:
        return _forbidden()
    if not users.allows(session.role, needed):
        return _not_allowed(session, needed)
    return session, form


@router.post("/agents/{agent_id}/revoke")
async def revoke_agent(request: Request, agent_id: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "admin")
    if isinstance(checked, Response):
        return checked
    if await run_in_threadpool(ctx.store.revoke_agent, agent_id):
        await run_in_threadpool(users.audit, ctx.store, checked[0].username, "agent.revoke", agent_id)
    return RedirectResponse(f"/agents/{quote(agent_id)}", status_code=303)


@router.post("/agents/{agent_id}/label")
async def label_agent(request: Request, agent_id: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "operator")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    label, site = str(form.get("label", ""))[:128].strip(), str(form.get("site", ""))[:128].strip()
    if await run_in_threadpool(ctx.store.set_agent_label, agent_id, label, site):
        await run_in_threadpool(
            users.audit, ctx.store, session.username, "agent.label", agent_id,
            f"label={label!r} site={site!r}",
        )
    return RedirectResponse(f"/agents/{quote(agent_id)}", status_code=303)


# -- enrollment tokens ------------------------------------------------------------------


async def _tokens_page(
    request: Request, ctx: AppContext, session: SessionInfo, new_token: str | None = None
) -> Response:
    rows = await run_in_threadpool(ctx.store.list_enrollment_tokens)
    return _render(
        request,
        "tokens.html",
        {"tokens": rows, "session": session, "new_token": new_token, "now": ctx.clock()},
    )


@router.get("/tokens", response_class=HTMLResponse)
async def tokens(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx, "admin")
    if isinstance(session, Response):
        return session
    return await _tokens_page(request, ctx, session)


@router.post("/tokens", response_class=HTMLResponse)
async def mint_token(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    note, site = str(form.get("note", ""))[:200], str(form.get("site", ""))[:200]
    token_id, token = await run_in_threadpool(
        ctx.store.mint_enrollment_token, ctx.settings.enrollment_token_ttl_s, note, site
    )
    await run_in_threadpool(
        users.audit, ctx.store, session.username, "token.mint", token_id, f"note={note!r}"
    )
    return await _tokens_page(request, ctx, session, new_token=token)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx)
    if isinstance(checked, Response):
        return checked
    if await run_in_threadpool(ctx.store.revoke_enrollment_token, token_id):
        await run_in_threadpool(
            users.audit, ctx.store, checked[0].username, "token.revoke", token_id
        )
    return RedirectResponse("/tokens", status_code=303)
