"""What every request handler reaches through ``request.app.state.gateway``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from cipher.pseudonym import PseudonymSecret
from gateway.audit import AuditEvent
from gateway.config import Settings
from gateway.index import Index
from gateway.restore import Restorer
from gateway.stagecache import StageCache
from gateway.store import Principal, Store
from gateway.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    store: Store
    upstream: Upstream
    restorer: Restorer
    index: Index
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    pseudonyms: PseudonymSecret | None = None
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(4, thread_name_prefix="gw-restore")
    )
    basic_cache: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    #: staged ciphertext of large instances (None: every request fetches its own)
    stages: StageCache | None = None

    def audit(self, events: Sequence[AuditEvent]) -> None:
        self.store.append_audit(events)


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def client_of(request: Request) -> str:
    return request.client.host if request.client else "-"
