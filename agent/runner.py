"""The agent's main loop, shared by ``scanfort agent run`` and the OS-service host.

Threads, each with a stop event: watchdog observers → the settler (intake thread) → a
queue → ``workers`` protect threads, each driving its own protect worker process
(``agent.worker``) → the journal → one sender group per destination.
A reconcile thread walks the folders at start and every ``reconcile_seconds``; a status
thread sends heartbeats and events. The calling thread checks health, disk watermarks and
writes ``status.json`` once a second.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, DestinationConfig
from agent.dispatch import Backoff, DestinationSender
from agent.forward import Forwarder, make_forwarder
from agent.journal import Item, Journal, same_version
from agent.logs import setup_logging, teardown_logging
from agent.pipeline import Pipeline
from agent.status import Reporter
from agent.watch import Settled, Settler, Watcher, walk
from agent.worker import WorkerPool

log = logging.getLogger(__name__)
TICK_S = 1.0
PRUNE_EVERY_S = 86400.0
PRUNE_AFTER_S = 30 * 86400.0  # finished items are remembered for at least 30 days
STUCK_S = 300.0
FINALIZE_BATCH = 64
SWEEP_AFTER_S = 600.0  # an unrecorded spool copy older than this is an orphan's leftover
WORKER_DOWN_RETRY_S = 30.0
WORKER_IDLE_S = 300.0  # a protect worker with nothing to do this long is ended  # a file waits this long when no protect worker could start
#: Protect threads per worker process: one records a file while the other feeds the worker.
PROTECT_THREADS_PER_WORKER = 2


class Agent:
    """All the agent's parts; :func:`run` drives one. Tests may inject the moving parts."""

    def __init__(self, config: AgentConfig,
                 forwarder_factory: Callable[[AgentConfig, DestinationConfig], Forwarder]
                 = make_forwarder,
                 backoff: Backoff | None = None,
                 disk_free: Callable[[Path], int] | None = None,
                 worker_argv: list[str] | None = None,
                 protect_timeout_s: float = 30.0,
                 worker_idle_s: float = WORKER_IDLE_S) -> None:
        self.config = config
        config.spool_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(config.journal_path)
        self.reporter = Reporter(config, self.journal, disk_free=disk_free)
        self.pipeline = Pipeline(config, self.journal, self.reporter,
                                 timeout_base_s=protect_timeout_s)
        self.worker_idle_s = worker_idle_s
        self.pool = WorkerPool(config.workers, list(config.recipients), config.spool_dir,
                               worker_argv)
        self.settler = Settler(config.settle_s)
        self.watcher = Watcher(config.folders, self.offer)
        self.senders = {d.name: DestinationSender(config, d, self.journal, self.reporter,
                                                  self._resolved,
                                                  self.pipeline.quarantine,
                                                  factory=forwarder_factory, backoff=backoff)
                        for d in config.destinations}
        self.queue: queue.Queue[Settled | None] = queue.Queue()
        self.finalize_queue: queue.Queue[int | None] = queue.Queue()
        self.inflight: set[str] = set()
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.intake_paused = False
        self.busy_since: dict[str, tuple[float, float]] = {}  # thread → (since, limit)

    # -- discovery -------------------------------------------------------------------------
    def offer(self, path: str, folder: int, delay: float = 0.0,
              first_seen: float | None = None) -> bool:
        """A path may be new: hand it to the settler unless the journal already has it."""
        with self._lock:
            if path in self.inflight:
                return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        if self.journal.is_known(path, st.st_size, st.st_mtime_ns):
            return False
        return self.settler.offer(path, folder, delay, first_seen)

    def reconcile(self, startup: bool = False) -> int:
        found = 0
        for i, folder in enumerate(self.config.folders):
            for path in walk(folder):
                if self.stop_event.is_set():
                    return found
                if path not in self.settler and self.offer(path, i):
                    found += 1
        if found and not startup:
            self.reporter.watcher["reconcile_finds"] += found
            log.info("reconcile scan found %d file(s) the watcher had not reported", found)
        return found

    # -- threads ---------------------------------------------------------------------------
    def _intake_loop(self) -> None:
        while not self.stop_event.is_set():
            self.settler.wakeup.wait(self.settler.next_check_in())
            self.settler.wakeup.clear()
            if self.intake_paused:
                continue  # files stay where the modality wrote them
            for s in self.settler.poll():
                with self._lock:
                    self.inflight.add(s.path)
                self.queue.put(s)

    def _protect_loop(self) -> None:
        while True:
            s = self.queue.get()
            if s is None:
                return
            me = threading.current_thread().name
            # The worker's own deadline bounds the protection; beyond that plus STUCK_S the
            # thread is stuck elsewhere (journal, file system).
            self.busy_since[me] = (time.monotonic(),
                                   STUCK_S + self.pipeline.timeout_for(s.size))
            try:
                outcome = self.pipeline.process(s, self.pool)
                if outcome.kind == "protected" and outcome.item_id is not None:
                    for name in self.config.folders[s.folder].destinations:
                        self.senders[name].wake()
                elif outcome.kind in ("changed", "incomplete", "retry", "worker_down"):
                    retry_in = max(self.config.settle_s, 1.0)
                    if outcome.kind == "worker_down":
                        retry_in = WORKER_DOWN_RETRY_S
                    with self._lock:
                        self.inflight.discard(s.path)
                    self.offer(s.path, s.folder, delay=retry_in, first_seen=s.first_seen)
                    if outcome.kind == "changed" and outcome.item_id is not None:
                        self.journal.set_state(outcome.item_id, "superseded")
                    if outcome.kind == "retry":
                        self.reporter.count("retries")
            except OSError as exc:
                # Spool full or unwritable: park the file, it is still in place.
                log.error("cannot protect %s: %s", self.journal.file_id(s.path), exc.strerror)
                self.reporter.event("error", "error", f"protect failed: {exc.strerror}")
                with self._lock:
                    self.inflight.discard(s.path)
                self.offer(s.path, s.folder, delay=30.0, first_seen=s.first_seen)
            except Exception:
                log.exception("unexpected error protecting %s", self.journal.file_id(s.path))
            finally:
                self.busy_since.pop(me, None)
                with self._lock:
                    self.inflight.discard(s.path)

    def _resolved(self, item_id: int) -> None:
        """Every delivery of an item is resolved (called by the senders)."""
        self.finalize_queue.put(item_id)

    def _finalize_loop(self) -> None:
        """Finalize resolved items in batches: one journal sync per batch, not per file."""
        while True:
            first = self.finalize_queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < FINALIZE_BATCH:
                try:
                    nxt = self.finalize_queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.finalize_queue.put(None)  # seen again after this batch
                    break
                batch.append(nxt)
            try:
                self.pipeline.finalize_many(batch)
            except Exception:
                # Left "protected" with nothing pending: the next start finalizes them.
                log.exception("finalizing %d item(s) failed", len(batch))

    def _reconcile_loop(self) -> None:
        next_prune = 0.0
        while not self.stop_event.wait(self.config.reconcile_interval_s):
            self.reconcile()
            if self.sweep_spool(min_age_s=SWEEP_AFTER_S):
                log.info("spool: removed copies the journal does not know")
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                pruned = self.journal.prune(time.time() - PRUNE_AFTER_S, same_version)
                if pruned:
                    log.info("journal: forgot %d finished item(s) whose file is gone", pruned)

    def _status_loop(self) -> None:
        interval = self.config.central.heartbeat_interval_s
        while True:
            try:
                self.reporter.run_once()
            except Exception:
                log.exception("status report failed")
            if self.stop_event.wait(interval):
                return

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, name=name, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    # -- lifecycle -------------------------------------------------------------------------
    def recover(self) -> None:
        """Resume what a previous run left in flight (after a crash or a stop)."""
        tmp = self.config.spool_dir / "tmp"
        for leftover in tmp.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        self.sweep_spool()
        for item in self.journal.items_in("discovered"):
            if same_version(item.path, item.size, item.mtime_ns):
                self.settler.offer(item.path, item.folder)
            else:
                self.journal.set_state(item.id, "superseded")
        for item in self.journal.items_in("protected"):
            if not self.journal.has_pending(item.id):
                self.pipeline.finalize(item.id)
            elif any(not (self.config.spool_dir / a.name).is_file()
                     for a in self.journal.artifacts(item.id).values()):
                self._reprotect(item)

    def sweep_spool(self, min_age_s: float = 0.0) -> int:
        """Remove spool copies the journal does not know: renamed into the spool just before
        a crash, or by a worker orphaned by a killed agent. ``min_age_s`` spares copies a
        running worker has just made and the journal is about to record."""
        names = self.journal.artifact_names()
        now, removed = time.time(), 0
        for art in self.config.spool_dir.glob("*.*"):
            if art.suffix not in (".file", ".dicom") or art.name in names:
                continue
            try:
                if now - art.stat().st_mtime >= min_age_s:
                    art.unlink()
                    removed += 1
            except OSError:
                pass
        return removed

    def _reprotect(self, item: Item) -> None:
        """A recorded spool copy is gone (a power cut lost its rename, or someone deleted
        it): protect the plaintext again; every destination gets the new copy."""
        if same_version(item.path, item.size, item.mtime_ns):
            log.warning("spool copy of %s is missing; protecting it again", item.file_id)
            self.pipeline.discard_artifacts(item.id)
            self.journal.set_state(item.id, "discovered", "spool copy missing")
            self.settler.offer(item.path, item.folder)
        else:
            log.error("spool copy of %s is missing and its plaintext changed or is gone",
                      item.file_id)
            self.pipeline.quarantine(item.id, "spool copy missing and plaintext changed")

    def start(self) -> None:
        self.recover()
        self.intake_paused = self.reporter.check_disk()
        self.watcher.start()
        self.reconcile(startup=True)
        for sender in self.senders.values():
            sender.start()
        for i in range(PROTECT_THREADS_PER_WORKER * self.config.workers):
            self._spawn(self._protect_loop, f"protect-{i}")
        self._spawn(self._intake_loop, "intake")
        self._spawn(self._finalize_loop, "finalize")
        self._spawn(self._reconcile_loop, "reconcile")
        self._spawn(self._status_loop, "status")
        self.reporter.event("started", message=f"{len(self.config.folders)} folder(s)")

    def tick(self) -> bool:
        """Periodic checks from the main thread; True while healthy."""
        self.intake_paused = self.reporter.check_disk()
        now = time.monotonic()
        if self.pool.kill_overdue(now):
            log.error("killed a protect worker that exceeded its time limit; the file is "
                      "protected again")
        self.pool.retire_idle(now, self.worker_idle_s)
        alive = self.watcher.check()
        self.reporter.watcher["observers_alive"] = alive
        self.reporter.watcher["overflows"] = self.watcher.restarts
        self.reporter.write_status_file({"workers": self.pool.status()})
        healthy = alive == len(self.config.folders)
        healthy &= all(t.is_alive() for t in self.threads)
        stuck = [name for name, (since, limit) in list(self.busy_since.items())
                 if now - since > limit]
        if stuck:
            # Not ticking lets the OS-service watchdog restart the agent; the file is
            # still in place and is protected again after the restart.
            log.error("protection stuck in %s", stuck)
            healthy = False
        return healthy and all(s.alive() for s in self.senders.values())

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        self.settler.wakeup.set()
        self.watcher.stop()
        for _ in range(PROTECT_THREADS_PER_WORKER * self.config.workers):
            self.queue.put(None)
        for sender in self.senders.values():
            sender.stop()
        deadline = time.monotonic() + timeout
        for sender in self.senders.values():
            sender.join(max(0.1, deadline - time.monotonic()))
        self.finalize_queue.put(None)  # after the senders: what they resolved is finalized
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.reporter.event("stopped")
        try:
            self.reporter.write_status_file({"workers": self.pool.status()})
        except OSError:
            pass
        self.pool.close()
        stuck = [t.name for t in self.threads if t.is_alive()]
        stuck += [t.name for s in self.senders.values() for t in s.threads if t.is_alive()]
        if stuck:
            log.warning("threads still busy at stop: %s (their work resumes next start)", stuck)
        else:
            self.journal.close()


def run(
    config: AgentConfig,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run the agent until ``stop`` is set.

    ``on_ready`` is called once when every folder is watched; ``on_tick`` at least every
    few seconds while the agent is healthy (systemd watchdog). On stop, in-flight work is
    finished or parked in the journal, from where the next start resumes it.
    """
    handler = setup_logging(config, foreground=False)
    agent = Agent(config)
    try:
        agent.start()
        log.info("agent started: %d folder(s), %d destination(s)", len(config.folders),
                 len(config.destinations))
        if on_ready is not None:
            on_ready()
        while not stop.wait(TICK_S):
            if agent.tick() and on_tick is not None:
                on_tick()
    finally:
        agent.stop()
        log.info("agent stopped")
        teardown_logging(handler)
