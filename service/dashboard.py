"""Server-rendered dashboard: login, fleet overview, agent pages, enrollment tokens.

Sessions live in the database (any central process can serve any request). Every form
carries a CSRF token: the session's for logged-in forms, a double-submit cookie for the
login form. A failed login answers only after a delay that doubles with recent failures.
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

from service import status
from service.chart import scans_per_hour_svg
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


def _render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
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


@router.post("/login", response_class=HTMLResponse)
async def login_submit(request: Request, ctx: Ctx) -> Response:
    form = await request.form()
    username, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:1024]
    sent, cookie = str(form.get("csrf", "")), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    next_url = _safe_next(str(form.get("next", "/")))
    if not cookie or not tokens_equal(sent, cookie):
        return _forbidden()
    ok, recent = await run_in_threadpool(ctx.store.check_login, username, password)
    if not ok:
        ctx.counters.inc("login_failures")
        # Slow down guessing: the answer comes only after the delay, doubling per recent failure.
        await _sleep(ctx.settings.login_failure_delay_s * 2 ** min(recent, 3))
        return _render(
            request,
            "login.html",
            {"csrf": cookie, "next": next_url, "error": "wrong user name or password"},
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


def _overview_context(ctx: AppContext) -> dict[str, Any]:
    now = ctx.clock()
    agents = ctx.store.list_agents()
    throughput = ctx.store.event_counts("protected", now - 3600)
    quarantines = ctx.store.event_counts("quarantined", now - 86400)
    rows: list[dict[str, Any]] = [
        {
            "agent": a,
            "state": status.agent_state(a, ctx.settings, now),
            "age": None if a.last_seen_at is None else now - a.last_seen_at,
            "per_hour": throughput.get(a.agent_id, 0),
        }
        for a in agents
    ]
    counts = {state: 0 for state in status.STATES}
    for row in rows:
        counts[row["state"]] += 1
    return {
        "rows": rows,
        "counts": counts,
        "alerts": status.alerts_for(agents, ctx.settings, now, quarantines),
        "now": now,
        "settings": ctx.settings,
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
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


def _agent_context(ctx: AppContext, agent_id: str) -> dict[str, Any] | None:
    agent = ctx.store.get_agent(agent_id)
    if agent is None:
        return None
    now = ctx.clock()
    times = ctx.store.event_times(agent_id, "protected", now - 86400)
    buckets = status.hourly_buckets(times, now)
    quarantines = ctx.store.event_counts("quarantined", now - 86400)
    return {
        "agent": agent,
        "state": status.agent_state(agent, ctx.settings, now),
        "age": None if agent.last_seen_at is None else now - agent.last_seen_at,
        "events": ctx.store.recent_events(agent_id, 50),
        "chart": scans_per_hour_svg(buckets, now),
        "scans_24h": sum(buckets),
        "alerts": status.alerts_for([agent], ctx.settings, now, quarantines),
        "status": agent.status or {},
        "now": now,
    }


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(request: Request, agent_id: str, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
    data = await run_in_threadpool(_agent_context, ctx, agent_id)
    if data is None:
        return HTMLResponse("<h1>404</h1><p>no such agent</p>", status_code=404)
    return _render(
        request,
        "agent.html",
        {
            **data,
            "session": session,
            "refresh_url": f"/partials/agents/{quote(agent_id)}",
            "refresh_s": ctx.settings.refresh_interval_s,
        },
    )


@router.get("/partials/agents/{agent_id}", response_class=HTMLResponse)
async def agent_partial(request: Request, agent_id: str, ctx: Ctx) -> Response:
    session = await _session(request, ctx)
    if session is None:
        return HTMLResponse("", status_code=401)
    data = await run_in_threadpool(_agent_context, ctx, agent_id)
    if data is None:
        return HTMLResponse("", status_code=404)
    return _render(request, "_agent.html", {**data, "session": session})


async def _checked_form(request: Request, ctx: AppContext) -> tuple[SessionInfo, Any] | Response:
    """Session and CSRF-checked form of a POST, or the response that refuses it."""
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
    form = await _check_csrf(request, session)
    if form is None:
        return _forbidden()
    return session, form


@router.post("/agents/{agent_id}/revoke")
async def revoke_agent(request: Request, agent_id: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx)
    if isinstance(checked, Response):
        return checked
    await run_in_threadpool(ctx.store.revoke_agent, agent_id)
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
    session = await _session(request, ctx)
    if session is None:
        return _login_redirect(request)
    return await _tokens_page(request, ctx, session)


@router.post("/tokens", response_class=HTMLResponse)
async def mint_token(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    note = str(form.get("note", ""))[:200]
    _id, token = await run_in_threadpool(
        ctx.store.mint_enrollment_token, ctx.settings.enrollment_token_ttl_s, note
    )
    return await _tokens_page(request, ctx, session, new_token=token)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx)
    if isinstance(checked, Response):
        return checked
    await run_in_threadpool(ctx.store.revoke_enrollment_token, token_id)
    return RedirectResponse("/tokens", status_code=303)
