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
from typing import Any

import requests

from agent.config import AgentConfig
from agent.errors import JournalError
from agent.journal import Journal
from agent.spool import Spool
from protocol import __version__
from protocol.wire import (
    API_PREFIX,
    MAX_QUARANTINE_ITEMS,
    Command,
    CommandResult,
    DestinationStatus,
    Heartbeat,
    QuarantineItem,
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
        self._command_acks: set[str] = set()  # received, to acknowledge in the next heartbeat
        self._commands_done: set[str] = set()  # carried out (commands arrive at least once)
        self._command_results: list[CommandResult] = []
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
                  file_id: str | None = None, destination: str | None = None,
                  study_keys: list[str] | None = None,
                  log_it: bool = True) -> tuple[str, float, str]:
        """Log an event (unless ``log_it`` is False: one per delivery would double the
        log) and return its outbox row, for a caller that stores it in its own journal
        transaction (so the event exists exactly when the change it reports does)."""
        event_id, at = uuid.uuid4().hex, self.clock()
        # The fields of protocol.wire.Event, in its order (a test keeps them equal),
        # without building the dataclass and copying it back into a dict per event.
        body = json.dumps({"event_id": event_id, "at": at, "kind": kind, "severity": severity,
                           "message": message[:512], "file_id": file_id,
                           "destination": destination,
                           "study_keys": list(study_keys or [])[:4]})
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(severity, logging.ERROR)
        if log_it and log.isEnabledFor(level):
            log.log(level, "%s%s%s%s", kind, f" [{destination}]" if destination else "",
                    f" file {file_id}" if file_id else "", f": {message}" if message else "")
        return event_id, at, body

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
                                       s.paused, s.last_success, s.last_error, s.last_error_at,
                                       folders=sum(1 for f in self.config.folders
                                                   if s.name in f.destinations))
                     for s in self.destinations.values()]
            acks, results = list(self._command_acks), list(self._command_results)
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
            state=self.state, name=self.config.name, quarantine=self._quarantine_items(),
            command_acks=acks, command_results=results)

    def _quarantine_items(self) -> list[QuarantineItem]:
        """What the central lists for operators: ids, destinations, ages, attempts. The
        peer's own words stay in the local journal (``agent quarantine show``): a PACS may
        quote attribute values in them."""
        items: list[QuarantineItem] = []
        for item in self.journal.quarantined():
            if item.state != "quarantined":
                continue
            refused: list[Any] = [d for d in self.journal.delivery_states(item.id)
                                  if d.state == "quarantined"]
            for d in refused or [None]:
                items.append(QuarantineItem(
                    item_id=str(item.id), destination=d.dest if d else "(all)",
                    since=item.updated_at,
                    reason=("refused by the destination" if d else "not protected")
                    + f" (details: scanfort agent quarantine show {item.id})",
                    attempts=d.attempts if d else 0))
                if len(items) >= MAX_QUARANTINE_ITEMS:
                    return items
        return items

    # -- commands from the central (retry / release of quarantined items) -----------------
    def _carry_out(self, commands: list[Command]) -> None:
        """Each command once (the central resends until acknowledged): the same requests
        as ``scanfort agent quarantine retry|release``, results reported next heartbeat."""
        for cmd in commands:
            with self._lock:
                self._command_acks.add(cmd.command_id)
                if cmd.command_id in self._commands_done:
                    continue
                self._commands_done.add(cmd.command_id)
            try:
                item_id = int(cmd.item_id)
                if cmd.kind == "retry":
                    what = self.journal.request_retry(
                        item_id, Spool(self.config.spool_dir).exists)
                    result = CommandResult(cmd.command_id, True, f"retry: {what}")
                elif cmd.kind == "release":
                    self.journal.request_release(item_id)
                    result = CommandResult(cmd.command_id, True, "released: after_ack applied")
                else:
                    result = CommandResult(cmd.command_id, False, f"unknown command {cmd.kind}")
            except (ValueError, JournalError) as exc:
                result = CommandResult(cmd.command_id, False, str(exc)[:512])
            log.info("central command %s %s item %s: %s", cmd.kind, cmd.destination,
                     cmd.item_id, "ok" if result.ok else result.message)
            with self._lock:
                self._command_results.append(result)

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
                answer = self._post(f"{base}/heartbeat", to_dict(hb))
                self._heartbeats.popleft()
                with self._lock:  # what this heartbeat reported needs no repeating
                    self._command_acks -= set(hb.command_acks)
                    sent = {r.command_id for r in hb.command_results}
                    self._command_results = [r for r in self._command_results
                                             if r.command_id not in sent]
                self._carry_out(_commands_of(answer))
            while pending := self.journal.outbox_peek(EVENT_BATCH):
                # The outbox holds each event's JSON already (see event_row): the batch
                # (protocol.wire.EventBatch) is put together from them as text.
                agent_id = json.dumps(central.agent_id or "unenrolled")
                body = (f'{{"agent_id": {agent_id}, "events": ['
                        + ", ".join(b for _, b in pending) + "]}")
                self._post(f"{base}/events", raw=body.encode())
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

    def _post(self, url: str, body: dict[str, object] | None = None,
              raw: bytes | None = None) -> Any:
        try:
            if raw is not None:
                resp = self.session.post(url, data=raw, timeout=self._timeout,
                                         headers={"Content-Type": "application/json"})
            else:
                resp = self.session.post(url, json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise _Unreachable(type(exc).__name__) from exc
        if resp.status_code >= 300:
            raise _Unreachable(f"HTTP {resp.status_code}")
        try:
            return resp.json()
        except ValueError:
            return None


def _commands_of(answer: Any) -> list[Command]:
    """The commands of a heartbeat response (older centrals send none)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("commands"), list):
        return []
    out = []
    for c in answer["commands"]:
        try:
            out.append(Command(str(c["command_id"])[:64], str(c["kind"]), str(c["item_id"]),
                               str(c.get("destination", "")), float(c.get("issued_at", 0))))
        except (KeyError, TypeError, ValueError):
            continue
    return out


class _Unreachable(Exception):
    pass
