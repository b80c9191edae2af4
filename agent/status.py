"""Health reporting: counters, events, destination states, heartbeats to the central.

Events go to the journal's outbox first (durable, bounded) and are sent in batches when
the central answers; heartbeats that could not be sent are kept in memory (the newest
``HEARTBEAT_BUFFER``) and sent, oldest first, once it answers again. The same snapshot is
written to ``status.json`` in the spool dir every few seconds for ``scanfort agent status``.
Nothing here carries a file name or a patient attribute: files are ``file_id`` hashes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from agent.config import AgentConfig
from agent.journal import Journal
from agent.spool import Spool
from scanfort import __version__
from scanfort.protocol import (
    API_PREFIX,
    DestinationStatus,
    Event,
    EventBatch,
    Heartbeat,
    to_dict,
)

log = logging.getLogger(__name__)
HEARTBEAT_BUFFER = 120
EVENT_BATCH = 500
#: An event identical to one recorded this recently (same kind, severity, message, file
#: and destination) is counted, not stored again: a full disk or a dead peer must not
#: grow the journal with the same error every few seconds.
REPEAT_WINDOW_S = 600.0


@dataclass
class DestinationState:
    name: str
    kind: str
    paused: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class Reporter:
    """Collects status; :meth:`run_once` pushes it to the central service."""

    def __init__(self, config: AgentConfig, journal: Journal,
                 clock: Callable[[], float] = time.time,
                 session: requests.Session | None = None,
                 disk_free: Callable[[Path], int] | None = None) -> None:
        self.config, self.journal, self.clock = config, journal, clock
        self.disk_free = disk_free or (lambda p: shutil.disk_usage(p).free)
        self.started = clock()
        self.destinations = {d.name: DestinationState(d.name, d.kind) for d in config.destinations}
        self.intake_paused = False
        self.free_disk: int | None = None
        self.watcher: dict[str, int] = {"reconcile_finds": 0, "overflows": 0,
                                        "observers_alive": 0}
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str, str, str | None, str | None], float] = {}
        self.repeats_suppressed = 0
        self.thread_failures: dict[str, int] = {}
        self.state = "running"  # running | stopped (the last heartbeat says so)
        self._heartbeats: deque[Heartbeat] = deque(maxlen=HEARTBEAT_BUFFER)
        self.session = session or requests.Session()
        self.central_ok: bool | None = None
        self._timeout = 10.0
        if config.central.token:
            self.session.headers["Authorization"] = f"Bearer {config.central.token}"
        self.session.verify = config.central.verify_tls

    # -- recording -------------------------------------------------------------------------
    def count(self, name: str, by: int = 1) -> None:
        self.journal.bump(name, by)

    def event(self, kind: str, severity: str = "info", message: str = "",
              file_id: str | None = None, destination: str | None = None) -> None:
        if severity != "info":
            key = (kind, severity, message, file_id, destination)
            now = self.clock()
            with self._lock:
                last = self._recent.get(key)
                if last is not None and now - last < REPEAT_WINDOW_S:
                    self.repeats_suppressed += 1
                    return
                if len(self._recent) > 4096:
                    self._recent = {k: t for k, t in self._recent.items()
                                    if now - t < REPEAT_WINDOW_S}
                self._recent[key] = now
        self.journal.outbox_add(*self.event_row(kind, severity, message, file_id, destination))

    def thread_failed(self, name: str, exc: BaseException) -> None:
        """A long-lived thread survived (or died of) an unexpected exception: visible in
        the status and the heartbeat, never silent."""
        with self._lock:
            self.thread_failures[name] = self.thread_failures.get(name, 0) + 1
        try:
            self.event("error", "error", f"thread {name}: {type(exc).__name__}")
        except Exception:  # the journal itself may be what failed
            log.debug("cannot record a thread failure event", exc_info=True)

    def event_row(self, kind: str, severity: str = "info", message: str = "",
                  file_id: str | None = None,
                  destination: str | None = None) -> tuple[str, float, str]:
        """Log an event and return its outbox row, for a caller that stores it in its own
        journal transaction (so the event exists exactly when the change it reports does)."""
        ev = Event(uuid.uuid4().hex, self.clock(), kind, severity, message[:512], file_id,
                   destination)
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(severity, logging.ERROR)
        log.log(level, "%s%s%s%s", kind, f" [{destination}]" if destination else "",
                f" file {file_id}" if file_id else "", f": {message}" if message else "")
        return ev.event_id, ev.at, json.dumps(to_dict(ev))

    def delivery_ok(self, dest: str) -> None:
        with self._lock:
            st = self.destinations[dest]
            st.last_success = self.clock()
            was_paused, st.paused = st.paused, False
        if was_paused:
            self.event("destination_resumed", destination=dest)

    def delivery_failed(self, dest: str, error: str, auth: bool = False) -> None:
        with self._lock:
            st = self.destinations[dest]
            st.last_error, st.last_error_at = error[:512], self.clock()
            newly_paused = auth and not st.paused
            if auth:
                st.paused = True
        if newly_paused:
            self.event("destination_paused", "error",
                       f"{error}; check the credentials, nothing is dropped", destination=dest)

    def set_intake_paused(self, paused: bool, free: int) -> None:
        self.free_disk = free
        if paused == self.intake_paused:
            return
        self.intake_paused = paused
        if paused:
            self.event("intake_paused", "warning",
                       f"spool volume below low watermark ({free} bytes free)")
        else:
            self.event("intake_resumed", message=f"{free} bytes free")

    # -- snapshots -------------------------------------------------------------------------
    def heartbeat(self) -> Heartbeat:
        depth, spool_bytes, oldest = self.journal.spool_stats()
        now = self.clock()
        counters = {k: v for k, v in self.journal.counters().items()
                    if k in ("seen", "protected", "forwarded", "quarantined", "retries")}
        with self._lock:
            dests = [DestinationStatus(s.name, s.kind, self.journal.pending_count(s.name),
                                       s.paused, s.last_success, s.last_error, s.last_error_at)
                     for s in self.destinations.values()]
        return Heartbeat(
            agent_id=self.config.central.agent_id or "unenrolled",
            version=__version__, host=socket.gethostname()[:256],
            os=f"{platform.system()} {platform.release()}"[:256],
            uptime_s=max(0.0, now - self.started), sent_at=now,
            watched_folders=len(self.config.folders), spool_depth=depth,
            spool_bytes=spool_bytes,
            oldest_item_age_s=None if oldest is None else max(0.0, now - oldest),
            intake_paused=self.intake_paused, free_disk_bytes=self.free_disk,
            counters=counters, destinations=dests,
            watcher={**self.watcher, "thread_failures": sum(self.thread_failures.values())},
            state=self.state)

    def write_status_file(self, extra: dict[str, object] | None = None) -> None:
        hb = self.heartbeat()
        doc = to_dict(hb)
        doc.update(extra or {})
        # No count of every state here: it walks the whole journal (months of kept files)
        # and ``agent status`` counts them itself, when asked.
        doc["events_buffered"] = self.journal.outbox_size()
        doc["central_reachable"] = self.central_ok
        doc["pid"] = os.getpid()
        doc["thread_failures"] = dict(self.thread_failures)
        doc["repeats_suppressed"] = self.repeats_suppressed
        Spool(self.config.spool_dir).write_status(json.dumps(doc, indent=1))

    def check_disk(self) -> bool:
        """Apply the watermarks to the spool volume; return True while intake is paused."""
        free = self.disk_free(self.config.spool_dir)
        if free < self.config.disk_low_bytes:
            self.set_intake_paused(True, free)
        elif free >= self.config.disk_high_bytes:
            self.set_intake_paused(False, free)
        else:
            self.free_disk = free
        return self.intake_paused

    # -- sending ---------------------------------------------------------------------------
    def run_once(self, timeout_s: float = 10.0) -> bool:
        """Queue a heartbeat and flush what is buffered; return True if the central took it."""
        central = self.config.central
        if not central.url or not central.token:
            return False
        self._timeout = timeout_s
        self._heartbeats.append(self.heartbeat())
        base = f"{central.url}{API_PREFIX}"
        try:
            while self._heartbeats:
                hb = self._heartbeats[0]
                self._post(f"{base}/heartbeat", to_dict(hb))
                self._heartbeats.popleft()
            while pending := self.journal.outbox_peek(EVENT_BATCH):
                events = [Event(**json.loads(body)) for _, body in pending]
                batch = EventBatch(central.agent_id or "unenrolled", events)
                self._post(f"{base}/events", to_dict(batch))
                self.journal.outbox_remove([eid for eid, _ in pending])
        except _Unreachable as exc:
            if self.central_ok is not False:
                log.warning("central unreachable (%s); buffering heartbeats and events", exc)
            self.central_ok = False
            return False
        if self.central_ok is False:
            log.info("central reachable again")
        self.central_ok = True
        return True

    def _post(self, url: str, body: dict[str, object]) -> None:
        try:
            resp = self.session.post(url, json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise _Unreachable(type(exc).__name__) from exc
        if resp.status_code >= 300:
            raise _Unreachable(f"HTTP {resp.status_code}")


class _Unreachable(Exception):
    pass
