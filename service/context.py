"""What every request handler needs, built once per application by ``create_app``."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.objects import ObjectBackend
from service.settings import Settings
from service.store import Store


@dataclass
class Counters:
    """Process-local counters exported on ``/metrics`` (Prometheus sums across processes)."""

    values: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.values[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.values)


@dataclass
class AppContext:
    settings: Settings
    store: Store
    objects: ObjectBackend
    clock: Callable[[], float] = time.time
    counters: Counters = field(default_factory=Counters)


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.scanfort
    return ctx


Ctx = Annotated[AppContext, Depends(get_context)]
