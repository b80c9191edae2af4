"""The agent's main loop, shared by ``scanfort agent run`` and the OS-service host.

Threads, each with a stop event: watchdog observers → the settler (intake thread) → a
queue → protect threads, each handing files to the protect worker pool (``agent.pool``)
→ the journal → one sender group per destination. A reconcile thread walks the folders
at start and every ``reconcile_seconds`` (only directories that changed, see
:class:`~agent.watch.Reconciler`); a status thread sends heartbeats and events. The
calling thread ticks once a second: disk watermarks and the journal's reserve, worker
deadlines, the operator's quarantine requests, ``status.json``, and it starts again any
thread that died (every loop also survives its own exceptions).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import AgentConfig, DestinationConfig
from agent.dispatch import Backoff, DestinationSender
from agent.errors import DeliveryError
from agent.forward import Forwarder, make_forwarder
from agent.journal import Item, Journal, same_version
from agent.logs import setup_logging, teardown_logging
from agent.outcome import Result, reoffer_delay
from agent.pipeline import Pipeline
from agent.pool import DEPTH, WorkerPool
from agent.spool import RESERVE_BYTES, Reserve, Spool
from agent.status import Reporter
from agent.watch import Reconciler, Settled, Settler, Watcher

log = logging.getLogger(__name__)
TICK_S = 1.0
PRUNE_EVERY_S = 86400.0
PRUNE_AFTER_S = 30 * 86400.0  # finished items are remembered for at least 30 days
STUCK_S = 300.0
FINALIZE_BATCH = 64
FINALIZE_LINGER_S = 0.05  # a finalize batch collects resolved items for this long
SWEEP_AFTER_S = 600.0  # an unrecorded spool copy older than this is an orphan's leftover
WORKER_IDLE_S = 300.0  # a protect worker with nothing to do this long is ended
FULL_PASS_S = 6 * 3600.0  # every directory is listed again at least this often
REQUESTS_EVERY_S = 2.0  # how often the operator's quarantine requests are looked for
CRASH_WAIT_S = 2.0  # a loop that raised waits this long before it goes on
STOP_REPORT_S = 5.0  # the final heartbeat and the outbox flush get at most this long
#: Protect threads per worker process: one records a file while the others keep the
#: worker's queue of requests (agent.pool.DEPTH) full.
PROTECT_THREADS_PER_WORKER = DEPTH + 1


class Agent:
    """All the agent's parts; :func:`run` drives one. Tests may inject the moving parts:
    forwarders, backoff, free disk, the worker command, and the clocks (``clock`` is
    monotonic, ``wall_clock`` the time recorded in the journal)."""

    def __init__(self, config: AgentConfig,
                 forwarder_factory: Callable[[AgentConfig, DestinationConfig], Forwarder]
                 = make_forwarder,
                 backoff: Backoff | None = None,
                 disk_free: Callable[[Path], int] | None = None,
                 worker_argv: list[str] | None = None,
                 protect_timeout_s: float = 30.0,
                 worker_idle_s: float = WORKER_IDLE_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        self.config = config
        self.clock, self.wall_clock = clock, wall_clock
        self.spool = Spool(config.spool_dir)
        self.spool.create()
        self.reserve = Reserve(self.spool, reserve_bytes)
        self.journal = Journal(self.spool.journal_path, clock=wall_clock)
        self.journal.on_full = self._journal_full
        self.reporter = Reporter(config, self.journal, clock=wall_clock, disk_free=disk_free)
        self.pipeline = Pipeline(config, self.journal, self.reporter, clock=clock,
                                 timeout_base_s=protect_timeout_s, spool=self.spool)
        self.worker_idle_s = worker_idle_s
        self.pool = WorkerPool(config.workers, list(config.recipients), config.spool_dir,
                               worker_argv, kernel=config.cipher_kernel)
        self.settler = Settler(config.settle_s, clock=clock, wall_clock=wall_clock)
        self.watcher = Watcher(config.folders, self.offer)
        # the slow full pass: every directory listed again once per FULL_PASS_S
        share = min(1.0, config.reconcile_interval_s / FULL_PASS_S)
        self.reconcilers = {f.key: Reconciler(f, clock=wall_clock, full_share=share)
                            for f in config.folders}
        self.senders = {d.name: DestinationSender(config, d, self.journal, self.reporter,
                                                  self._resolved, self._refused,
                                                  factory=forwarder_factory, backoff=backoff,
                                                  clock=wall_clock)
                        for d in config.destinations}
        self.queue: queue.Queue[Settled | None] = queue.Queue()
        self.finalize_queue: queue.Queue[int | None] = queue.Queue()
        self.inflight: set[str] = set()
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: dict[str, tuple[Callable[[], None], threading.Thread]] = {}
        self.thread_restarts = 0
        self.intake_paused = False
        self.busy_since: dict[str, tuple[float, float]] = {}  # thread → (since, limit)
        self._next_requests = 0.0
        self._full_logged = False

    # -- discovery -------------------------------------------------------------------------
    def offer(self, path: str, folder: str, delay: float = 0.0,
              first_seen: float | None = None) -> bool:
        """A path may be new: hand it to the settler unless the journal already has it.

        Symbolic links are skipped unless the folder follows them, and then only to a
        file inside a watched folder: a link must not carry a file out of anywhere else.
        """
        conf = self.config.folder(folder)
        if conf is None:
            return False
        with self._lock:
            if path in self.inflight:
                return False
        if delay <= 0 and path in self.settler:
            return False  # e.g. another event of a file being written
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not conf.follow_symlinks or \
                        self.config.folder_of(os.path.realpath(path)) is None:
                    return False
                st = os.stat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        if self.journal.is_known(path, st.st_size, st.st_mtime_ns):
            return False
        return self.settler.offer(path, folder, delay, first_seen)

    def reconcile(self, startup: bool = False) -> int:
        found = 0
        for folder in self.config.folders:
            for path in self.reconcilers[folder.key].changed_files():
                if self.stop_event.is_set():
                    return found
                if path not in self.settler and self.offer(path, folder.key):
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
            self.busy_since[me] = (self.clock(), STUCK_S + self.pipeline.timeout_for(s.size))
            try:
                self._apply(s, self.pipeline.process(s, self.pool))
            except Exception as exc:
                # The journal's volume full, a bug: the file is still in place; try later.
                log.error("protecting %s failed: %s", self.journal.file_id(s.path),
                          type(exc).__name__)
                self.reporter.thread_failed("protect", exc)
                self._reoffer(s, 5.0)
            finally:
                self.busy_since.pop(me, None)
                with self._lock:
                    self.inflight.discard(s.path)

    def _apply(self, s: Settled, result: Result) -> None:
        """Do what :data:`agent.outcome.POLICY` says about this outcome."""
        policy = result.policy
        if policy.wake_senders and result.item_id is not None:
            conf = self.config.folder(s.folder)
            for name in conf.destinations if conf else ():
                self.senders[name].wake()
            if result.resolved:
                self.finalize_queue.put(result.item_id)  # e.g. every delivery refused
        if policy.supersede and result.item_id is not None:
            self.journal.set_state(result.item_id, "superseded")
        if policy.counter:
            self.reporter.count(policy.counter)
        delay = reoffer_delay(policy, self.config.settle_s)
        if delay is not None:
            self._reoffer(s, delay)

    def _reoffer(self, s: Settled, delay: float) -> None:
        with self._lock:
            self.inflight.discard(s.path)
        self.offer(s.path, s.folder, delay=delay, first_seen=s.first_seen)

    def _resolved(self, item_id: int) -> None:
        """No delivery of an item is pending any more (called by the senders)."""
        self.finalize_queue.put(item_id)

    def _refused(self, item_id: int, dest: str, err: DeliveryError) -> None:
        """A destination refused an object for good: that delivery waits for an operator,
        with the peer's own reason; the other destinations go on."""
        item = self.journal.item(item_id)
        event = self.reporter.event_row("quarantined", "warning", f"{dest}: {err}",
                                        file_id=item.file_id, destination=dest)
        if self.journal.delivery_quarantine(item_id, dest, err.reason, event=event):
            self.finalize_queue.put(item_id)

    def _finalize_loop(self) -> None:
        """Finalize resolved items in batches: one journal sync per batch, not per file."""
        while True:
            first = self.finalize_queue.get()
            if first is None:
                return
            batch = [first]
            # What the senders resolve within FINALIZE_LINGER_S joins this batch: in a
            # burst one journal sync, one query set and one commit then cover many items
            # rather than one or two (the plaintext waits that much longer, nothing else).
            until = time.monotonic() + FINALIZE_LINGER_S  # a real wait, whatever the clock
            while len(batch) < FINALIZE_BATCH:
                try:
                    nxt = self.finalize_queue.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.finalize_queue.put(None)  # seen again after this batch
                    break
                batch.append(nxt)
            try:
                self.pipeline.finalize_many(sorted(set(batch)))
            except Exception as exc:
                # Left "protected" with nothing pending: tried again shortly (and at start).
                log.error("finalizing %d item(s) failed: %s", len(batch), type(exc).__name__)
                self.reporter.thread_failed("finalize", exc)
                if self.stop_event.wait(CRASH_WAIT_S):
                    return
                for item_id in batch:
                    self.finalize_queue.put(item_id)

    def _reconcile_loop(self) -> None:
        next_prune = 0.0
        while not self.stop_event.wait(self.config.reconcile_interval_s):
            try:
                self.reconcile()
                if self.spool.sweep(self.journal.artifact_names(), min_age_s=SWEEP_AFTER_S):
                    log.info("spool: removed copies the journal does not know")
                if self.clock() >= next_prune:
                    next_prune = self.clock() + PRUNE_EVERY_S
                    pruned = self.journal.prune(self.wall_clock() - PRUNE_AFTER_S,
                                                same_version)
                    if pruned:
                        log.info("journal: forgot %d finished item(s) whose file is gone",
                                 pruned)
            except Exception as exc:
                log.error("reconcile failed: %s", type(exc).__name__)
                self.reporter.thread_failed("reconcile", exc)

    def _status_loop(self) -> None:
        interval = self.config.central.heartbeat_interval_s
        while True:
            try:
                self.reporter.run_once()
            except Exception as exc:
                log.error("status report failed: %s", type(exc).__name__)
            if self.stop_event.wait(interval):
                return

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads[name] = (target, t)

    def _supervise(self) -> None:
        """Start again a thread that died; it shows in the status and the heartbeat."""
        if self.stop_event.is_set():
            return
        for name, (target, t) in list(self.threads.items()):
            if not t.is_alive():
                log.error("thread %s died; starting it again", name)
                self.reporter.thread_failed(name, RuntimeError("thread died"))
                self.thread_restarts += 1
                self._spawn(name, target)
        for sender in self.senders.values():
            self.thread_restarts += sender.revive()

    def _journal_full(self) -> bool:
        """A commit failed on a full volume: give the reserve back so it can go through."""
        released = self.reserve.release()
        if released and not self._full_logged:
            self._full_logged = True
            log.error("spool volume full: released the journal's reserve")
        return released

    # -- lifecycle -------------------------------------------------------------------------
    def recover(self) -> None:
        """Resume what a previous run left in flight (after a crash or a stop)."""
        self.spool.clear_tmp()
        self.journal.rekey_folders(lambda p: (f.key if (f := self.config.folder_of(p))
                                              else None))
        self.spool.sweep(self.journal.artifact_names())
        for item in self.journal.items_in("held"):
            if self.config.folder(item.folder) is not None:
                self.journal.set_state(item.id, "protected")  # its folder is back
        self._operator_requests()
        for item in self.journal.items_in("protected"):
            if not self.journal.has_pending(item.id):
                self.pipeline.finalize(item.id)
            elif any(not self.spool.exists(a.name)
                     for a in self.journal.artifacts(item.id).values()):
                self._reprotect(item)

    def _operator_requests(self) -> None:
        """Carry out ``agent quarantine retry|release`` (written to the journal, perhaps
        while this agent runs)."""
        for item in self.journal.items_in("requeued"):
            with self._lock:
                if item.path in self.inflight:
                    continue
            if item.path in self.settler:
                continue
            if self.config.folder(item.folder) is None:
                continue  # waits until its folder is back in the config
            if same_version(item.path, item.size, item.mtime_ns):
                self.settler.offer(item.path, item.folder)
            else:
                self.journal.set_state(item.id, "superseded", "file changed or gone")
        for item in self.journal.items_in("releasing"):
            if self.threads:
                self.finalize_queue.put(item.id)
            else:  # at start, before the finalize thread runs
                self.pipeline.finalize(item.id)

    def _reprotect(self, item: Item) -> None:
        """A recorded spool copy is gone (a power cut lost its rename, or someone deleted
        it): protect the plaintext again; every destination gets the new copy."""
        if same_version(item.path, item.size, item.mtime_ns):
            log.warning("spool copy of %s is missing; protecting it again", item.file_id)
            self.pipeline.discard_artifacts(item.id)
            self.journal.set_state(item.id, "requeued", "spool copy missing")
            self.settler.offer(item.path, item.folder)
        else:
            log.error("spool copy of %s is missing and its plaintext changed or is gone",
                      item.file_id)
            self.pipeline.quarantine(item.id, "spool copy missing and plaintext changed")

    def start(self) -> None:
        self.recover()
        self.intake_paused = self.reporter.check_disk()
        self.reserve.restore(self.reporter.free_disk or 0)
        self.watcher.start()
        self.reconcile(startup=True)
        for sender in self.senders.values():
            sender.start()
        for i in range(PROTECT_THREADS_PER_WORKER * self.config.workers):
            self._spawn(f"protect-{i}", self._protect_loop)
        self._spawn("intake", self._intake_loop)
        self._spawn("finalize", self._finalize_loop)
        self._spawn("reconcile", self._reconcile_loop)
        self._spawn("status", self._status_loop)
        self.reporter.event("started", message=f"{len(self.config.folders)} folder(s)")

    def tick(self) -> bool:
        """Periodic checks from the main thread; True while healthy."""
        now = self.clock()
        try:
            self.intake_paused = self.reporter.check_disk()
            self.reserve.restore(self.reporter.free_disk or 0)
        except OSError:
            pass
        if self.pool.kill_overdue(now):
            log.error("killed a protect worker that exceeded its time limit; the file is "
                      "protected again")
        self.pool.retire_idle(now, self.worker_idle_s)
        alive = self.watcher.check()
        self.reporter.watcher["observers_alive"] = alive
        self.reporter.watcher["overflows"] = self.watcher.restarts
        self._supervise()
        try:
            if now >= self._next_requests:
                self._next_requests = now + REQUESTS_EVERY_S
                self._operator_requests()
            self.reporter.write_status_file({"workers": self.pool.status(),
                                             "thread_restarts": self.thread_restarts})
        except Exception as exc:  # a full volume: the next tick tries again
            log.debug("tick: %s", type(exc).__name__)
        healthy = alive == len(self.config.folders)
        stuck = [name for name, (since, limit) in list(self.busy_since.items())
                 if now - since > limit]
        if stuck:
            # Not ticking lets the OS-service watchdog restart the agent; the file is
            # still in place and is protected again after the restart.
            log.error("protection stuck in %s", stuck)
            healthy = False
        return healthy

    def stop(self, timeout: float = 15.0) -> None:
        """Finish or park in-flight work, then tell the central: a final ``stopped``
        heartbeat and the event outbox flushed (within the service's stop timeout)."""
        self.stop_event.set()
        self.settler.wakeup.set()
        self.watcher.stop()
        for _ in range(PROTECT_THREADS_PER_WORKER * self.config.workers):
            self.queue.put(None)
        for sender in self.senders.values():
            sender.stop()
        deadline = self.clock() + timeout
        for sender in self.senders.values():
            sender.join(max(0.1, deadline - self.clock()))
        self.finalize_queue.put(None)  # after the senders: what they resolved is finalized
        for _, t in self.threads.values():
            t.join(max(0.1, deadline - self.clock()))
        # within the service's stop timeout (30 s): the workers, then the final report
        self.pool.close(grace_s=min(10.0, max(0.5, deadline - self.clock())))
        self.reporter.state = "stopped"
        try:
            self.reporter.event("stopped")
            self.reporter.run_once(timeout_s=max(0.5, min(STOP_REPORT_S,
                                                          deadline - self.clock())))
        except Exception as exc:
            log.warning("final status report failed: %s", type(exc).__name__)
        try:
            self.reporter.write_status_file({"workers": self.pool.status(),
                                             "thread_restarts": self.thread_restarts})
        except Exception:
            pass
        stuck = [t.name for _, t in self.threads.values() if t.is_alive()]
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
