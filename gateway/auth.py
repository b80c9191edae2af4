"""Who may read: session cookies for people, bearer tokens and HTTP Basic for DICOMweb clients.

Roles: ``reader`` (QIDO/WADO, the viewer), ``auditor`` (the audit page and CSV), ``admin``
(everything, reindex). A wrong password is answered after a delay that doubles with each
recent failure (capped at 8x), as the central service does. A successful Basic check is
remembered for a minute in memory (keyed by a hash of the credentials) so that a viewer's
hundreds of requests do not each pay scrypt. OIDC would add one more way to produce a
:class:`Principal` here; nothing downstream depends on how a user authenticated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from fastapi import HTTPException, Request

from gateway.audit import AuditEvent
from gateway.context import Gateway, client_of, get_gateway
from gateway.store import Principal

SESSION_COOKIE = "sfgw_session"
_BASIC_TTL_S = 60.0
_REALM = 'Basic realm="scanfort-gateway", charset="UTF-8"'


def login_delay(gw: Gateway, recent_failures: int) -> None:
    gw.sleep(gw.settings.login_failure_delay_s * min(2**recent_failures, 8))


def _unauthorized(request: Request, message: str) -> HTTPException:
    headers = {} if SESSION_COOKIE in request.cookies else {"WWW-Authenticate": _REALM}
    return HTTPException(401, message, headers=headers)


def _basic(gw: Gateway, request: Request, encoded: str) -> Principal:
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized(request, "malformed Basic credentials") from None
    if not sep:
        raise _unauthorized(request, "malformed Basic credentials")
    key = hashlib.sha256(f"{user}\0{password}".encode()).hexdigest()
    now = gw.clock()
    cached = gw.basic_cache.get(key)
    if cached and cached[1] > now:
        return cached[0]
    principal, recent = gw.store.check_login(user, password)
    if principal is None:
        login_delay(gw, recent)
        gw.audit([AuditEvent(user, client_of(request), "login", "failed", detail="basic")])
        raise _unauthorized(request, "wrong username or password")
    if len(gw.basic_cache) > 1000:
        gw.basic_cache.clear()
    gw.basic_cache[key] = (principal, now + _BASIC_TTL_S)
    return principal


def authenticate(request: Request) -> Principal:
    """The caller, or 401 (no, expired or wrong credentials)."""
    gw = get_gateway(request)
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        principal = gw.store.authenticate_token(value.strip(), "api")
        if principal is None:
            raise _unauthorized(request, "unknown or expired token")
        return principal
    if scheme.lower() == "basic" and value:
        return _basic(gw, request, value.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        principal = gw.store.authenticate_token(cookie, "session")
        if principal is None:
            raise _unauthorized(request, "session expired: log in again")
        return principal
    raise _unauthorized(request, "authentication required")


def require(request: Request, role: str, *, study: str = "", series: str = "",
            instance: str = "") -> Principal:  # fmt: skip
    """The caller if they hold ``role``; otherwise 403 and an audit entry."""
    principal = authenticate(request)
    if not principal.has(role):
        get_gateway(request).audit([
            AuditEvent(principal.username, client_of(request), "denied", "denied",
                       study, series, instance, detail=f"{request.method} needs {role}")
        ])  # fmt: skip
        raise HTTPException(403, f"the {role} role is required")
    return principal
