"""Dashboard pages for running a site: events, quarantine, exam lookup, users, audit log.

Same rules as ``service.dashboard``: a session for every page, the role each action
needs, a CSRF token in every form, every change in the audit log.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from service import commands, fleet, lookup, throttle, users
from service.context import AppContext, Ctx
from service.dashboard import _checked_form, _page_session, _render, event_filters
from service.store import SessionInfo

router = APIRouter(include_in_schema=False)


# -- events -----------------------------------------------------------------------------


@router.get("/events", response_class=HTMLResponse)
async def events_page(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx)
    if isinstance(session, Response):
        return session
    filters = event_filters(request)
    agent_id = request.query_params.get("agent", "")[:32] or None

    def load() -> dict[str, Any]:
        agents = {a.agent_id: a for a in ctx.store.list_agents()}
        return {
            "page": fleet.events_page(ctx.store, agent_id=agent_id, **filters),
            "options": fleet.event_filter_options(ctx.store),
            "agents": agents,
        }

    data = await run_in_threadpool(load)
    older = None
    if data["page"].next_before is not None:
        query = {k: v for k, v in {**filters, "agent": agent_id}.items() if v}
        query["before"] = data["page"].next_before
        older = "/events?" + urlencode(query)
    return _render(
        request,
        "events.html",
        {**data, "session": session, "filters": filters, "agent_filter": agent_id, "older": older},
    )


# -- quarantine and commands ------------------------------------------------------------


def _quarantine_context(ctx: AppContext) -> dict[str, Any]:
    commands.expire_overdue(ctx.store, ctx.settings.command_ttl_s)
    agents = ctx.store.list_agents(with_status=True)
    return {
        "entries": fleet.quarantine_entries(agents),
        "commands": commands.list_commands(ctx.store, limit=50),
        "agents": {a.agent_id: a for a in agents},
        "now": ctx.clock(),
    }


@router.get("/quarantine", response_class=HTMLResponse)
async def quarantine_page(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx)
    if isinstance(session, Response):
        return session
    data = await run_in_threadpool(_quarantine_context, ctx)
    return _render(request, "quarantine.html", {**data, "session": session})


@router.post("/quarantine/command")
async def quarantine_command(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "operator")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    agent_id, kind = str(form.get("agent_id", ""))[:32], str(form.get("kind", ""))[:16]
    item_id, destination = str(form.get("item_id", ""))[:64], str(form.get("destination", ""))[:64]

    def issue() -> str | None:
        agent = ctx.store.get_agent(agent_id)
        if agent is None or agent.revoked_at is not None:
            return None
        listed = {
            (str(q.get("item_id")), str(q.get("destination")))
            for q in (agent.status or {}).get("quarantine") or []
        }
        if (item_id, destination) not in listed:
            return None  # only items the agent reports as quarantined
        command_id = commands.enqueue(
            ctx.store, agent_id, kind, item_id, destination, by=session.username
        )
        users.audit(
            ctx.store,
            session.username,
            f"quarantine.{kind}",
            agent_id,
            f"item={item_id} destination={destination} command={command_id}",
        )
        return command_id

    if kind not in ("retry", "release"):
        return HTMLResponse("<h1>400</h1><p>unknown action</p>", status_code=400)
    if await run_in_threadpool(issue) is None:
        return HTMLResponse(
            "<h1>404</h1><p>that item is not in the agent's quarantine list</p>", status_code=404
        )
    return RedirectResponse("/quarantine", status_code=303)


# -- exam lookup ------------------------------------------------------------------------


@router.get("/lookup", response_class=HTMLResponse)
async def lookup_page(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx)
    if isinstance(session, Response):
        return session
    return _render(request, "lookup.html", {"session": session, "result": None, "error": None})


@router.post("/lookup", response_class=HTMLResponse)
async def lookup_submit(request: Request, ctx: Ctx) -> Response:
    # POST, not GET: the typed identifier must not end up in URLs, history or access logs
    checked = await _checked_form(request, ctx, "viewer")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    query = str(form.get("q", ""))[: lookup.MAX_QUERY_LEN]

    def run() -> dict[str, Any]:
        key = lookup.load_key(ctx.settings.pseudonym_secret_path)
        sightings = lookup.find(ctx.store, lookup.study_key(key, query))
        agents = {a.agent_id: a for a in ctx.store.list_agents()}
        protected = [s for s in sightings if s.kind == "protected"]
        acknowledged: dict[str, float] = {}
        for s in sightings:
            if s.kind == "forwarded" and s.destination:
                acknowledged.setdefault(s.destination, s.at)
        return {
            "sightings": sightings,
            "protected": protected,
            "acknowledged": acknowledged,
            "agents": agents,
            "exams": lookup.summarize(sightings),
        }

    if not query.strip(" \x00"):
        return _render(
            request,
            "lookup.html",
            {"session": session, "result": None, "error": "type an identifier"},
        )
    try:
        result = await run_in_threadpool(run)
    except lookup.LookupUnavailable:
        return _render(
            request,
            "lookup.html",
            {
                "session": session,
                "result": None,
                "error": "exam lookup needs the site pseudonymisation secret on the central",
            },
            status_code=503,
        )
    return _render(request, "lookup.html", {"session": session, "result": result, "error": None})


# -- users and audit --------------------------------------------------------------------


async def _users_page(
    request: Request, ctx: AppContext, session: SessionInfo, error: str | None = None
) -> Response:
    rows = await run_in_threadpool(users.list_users, ctx.store)
    locked = await run_in_threadpool(throttle.locked_users, ctx.store)
    return _render(
        request,
        "users.html",
        {"session": session, "users": rows, "roles": users.ROLES, "error": error,
         "locked": locked},
        status_code=400 if error else 200,
    )


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx, "admin")
    if isinstance(session, Response):
        return session
    return await _users_page(request, ctx, session)


@router.post("/users", response_class=HTMLResponse)
async def add_user(request: Request, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "admin")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    name, role = str(form.get("username", ""))[:64], str(form.get("role", ""))[:16]
    password = str(form.get("password", ""))[:1024]
    try:
        await run_in_threadpool(
            users.add_user, ctx.store, name, password, role, by=session.username
        )
    except users.UserError as exc:
        return await _users_page(request, ctx, session, str(exc))
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{username}/disable", response_class=HTMLResponse)
async def disable_user(request: Request, username: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "admin")
    if isinstance(checked, Response):
        return checked
    try:
        await run_in_threadpool(users.disable_user, ctx.store, username, by=checked[0].username)
    except users.UserError as exc:
        return await _users_page(request, ctx, checked[0], str(exc))
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{username}/unlock", response_class=HTMLResponse)
async def unlock_user(request: Request, username: str, ctx: Ctx) -> Response:
    checked = await _checked_form(request, ctx, "admin")
    if isinstance(checked, Response):
        return checked
    if await run_in_threadpool(throttle.unlock, ctx.store, username):
        await run_in_threadpool(users.audit, ctx.store, checked[0].username, "user.unlock", username)
    return RedirectResponse("/users", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, ctx: Ctx) -> Response:
    session = await _page_session(request, ctx, "admin")
    if isinstance(session, Response):
        return session
    def load() -> list[users.AuditRow]:
        commands.expire_overdue(ctx.store, ctx.settings.command_ttl_s)
        return users.audit_log(ctx.store)

    rows = await run_in_threadpool(load)
    return _render(request, "audit.html", {"session": session, "rows": rows})
