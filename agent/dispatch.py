"""Per-destination senders: claim due deliveries, send, record, retry with backoff.

Each destination gets ``concurrency`` threads, each with its own forwarder. A failed
delivery waits ``initial * 2**attempts`` seconds (capped), with jitter so that a fleet
coming back after an outage does not stampede; transient errors are retried forever.
401/403 pause the whole destination (one probe per backoff period, nothing dropped);
a permanent error quarantines that one delivery (the item's other destinations go on).
A sender thread survives any exception: it is logged once, the thread waits and goes on.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable

from agent import crashpoints
from agent.config import AgentConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward import Forwarder, Outgoing, make_forwarder
from agent.journal import DueObject, Journal
from agent.status import Reporter

log = logging.getLogger(__name__)
MAX_IDLE_WAIT = 5.0
#: A thread claims up to this many due deliveries at once (more if its forwarder sends
#: batches), sends them and records their acknowledgements in one journal transaction:
#: in a burst that is one claim query and one commit per CLAIM_BATCH objects, not per
#: object. Only what is already due is claimed, so a lone file is never held back.
CLAIM_BATCH = 8
#: After an unexpected exception (the journal's volume full, a bug) a thread waits this long.
CRASH_WAIT = 2.0


class Backoff:
    """Exponential backoff with equal jitter: half fixed, half random."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial, self.cap = initial, cap
        self.rng = rng or random.Random()

    def delay(self, attempts: int) -> float:
        base = min(self.cap, self.initial * (2 ** min(attempts, 40)))
        return base / 2 + self.rng.uniform(0, base / 2)


class DestinationSender:
    def __init__(self, config: AgentConfig, dest: DestinationConfig, journal: Journal,
                 reporter: Reporter, on_resolved: Callable[[int], None],
                 on_permanent: Callable[[int, str, DeliveryError], None],
                 factory: Callable[[AgentConfig, DestinationConfig], Forwarder] = make_forwarder,
                 clock: Callable[[], float] = time.time,
                 backoff: Backoff | None = None) -> None:
        self.config, self.dest, self.journal, self.reporter = config, dest, journal, reporter
        self.on_resolved, self.on_permanent = on_resolved, on_permanent
        self.factory, self.clock = factory, clock
        self.backoff = backoff or Backoff(config.retry_initial_s, config.retry_max_s)
        self._cond = threading.Condition()
        self._claimed: set[int] = set()
        self._stop = threading.Event()
        self._paused_until = 0.0
        self._pause_attempts = 0
        self.threads = [self._thread(i) for i in range(dest.concurrency)]
        self.failures = 0  # unexpected exceptions survived
        self.restarts = 0  # threads started again after they died

    def _thread(self, i: int) -> threading.Thread:
        return threading.Thread(target=self._run, name=f"send-{self.dest.name}-{i}",
                                daemon=True)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def revive(self) -> int:
        """Start again any thread that died (never expected: see :meth:`_run`)."""
        revived = 0
        for i, t in enumerate(self.threads):
            if not t.is_alive() and not self._stop.is_set() and t.ident is not None:
                self.threads[i] = self._thread(i)
                self.threads[i].start()
                self.restarts += 1
                revived += 1
        return revived

    def wake(self) -> None:
        """Something new is due: one idle thread claims it. (Waking them all made each
        claim a query that mostly found nothing, one per thread per protected file; a
        thread busy sending claims what accumulated meanwhile when it is done.)"""
        with self._cond:
            self._cond.notify()

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self.wake_all()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def _claim(self, limit: int, forwarder: Forwarder) -> list[DueObject]:
        idle = False
        with self._cond:
            while not self._stop.is_set():
                now = self.clock()
                if now >= self._paused_until:
                    # While paused, a single probe at a time goes out.
                    n = 1 if self.reporter.destinations[self.dest.name].paused else limit
                    batch = self.journal.due_objects(self.dest.name, now, n, self._claimed)
                    if batch:
                        self._claimed.update(d.item_id for d in batch)
                        return batch
                    nxt = self.journal.next_due_at(self.dest.name)
                    wait = MAX_IDLE_WAIT if nxt is None else nxt - now
                else:
                    wait = self._paused_until - now
                if not idle:
                    idle = True
                    forwarder.idle()
                self._cond.wait(max(0.01, min(MAX_IDLE_WAIT, wait)))
            return []

    def _run(self) -> None:
        """The thread: :meth:`_loop` until stopped, whatever it raises."""
        logged: str | None = None
        while not self._stop.is_set():
            try:
                self._loop()
                return
            except Exception as exc:
                self.failures += 1
                what = f"{type(exc).__name__}: {exc}"
                if what != logged:  # the same error over and over is logged once
                    log.error("destination %s: sender error (%s); going on",
                              self.dest.name, type(exc).__name__)
                    logged = what
                self.reporter.thread_failed(f"send-{self.dest.name}", exc)
                self._stop.wait(CRASH_WAIT)

    def _loop(self) -> None:
        forwarder: Forwarder | None = None
        try:
            while not self._stop.is_set():
                if forwarder is None:
                    try:
                        forwarder = self.factory(self.config, self.dest)
                    except DeliveryError as exc:
                        self._pause(str(exc))
                        self._stop.wait(self._paused_until - self.clock())
                        continue
                batch = self._claim(max(forwarder.batch_size, CLAIM_BATCH), forwarder)
                if not batch:
                    continue
                try:
                    self._send(forwarder, batch)
                finally:
                    with self._cond:
                        self._claimed.difference_update(d.item_id for d in batch)
        finally:
            if forwarder is not None:
                forwarder.close()

    def _send(self, forwarder: Forwarder, batch: list[DueObject]) -> None:
        objs: list[Outgoing] = []
        keys: dict[int, tuple[str, ...]] = {}
        for d in batch:
            if d.name is None or d.sha256 is None or d.size is None or d.state != "protected":
                continue  # finalized or quarantined meanwhile
            folder = self.config.folder(d.folder)
            try:
                relpath = (os.path.relpath(d.path, folder.path) if folder is not None
                           else os.path.basename(d.path))
            except ValueError:
                relpath = d.file_id
            objs.append(Outgoing(d.item_id, d.file_id, self.config.spool_dir / d.name,
                                 d.sha256, d.size, d.mode, relpath, d.sop_instance_uid,
                                 d.uids))
            keys[d.item_id] = d.study_keys
        if not objs:
            return
        crashpoints.reached("send.before")
        try:
            results = forwarder.send_many(objs)
        except Exception as exc:  # a forwarder bug must not kill the sender thread
            log.exception("destination %s: unexpected error", self.dest.name)
            results = [DeliveryError(f"internal: {type(exc).__name__}") for _ in objs]
        acked = [obj for obj, err in zip(objs, results, strict=True) if err is None]
        if acked:
            crashpoints.reached("send.after_ack")
            self.reporter.delivery_ok(self.dest.name)
            self._pause_attempts = 0
            # The acknowledgements and their ``forwarded`` events (with the exam's keyed
            # study hashes, so the central can tell which destinations took an exam) in
            # one transaction: an event exists exactly when its delivery is done.
            resolved = self.journal.deliveries_done(self.dest.name, [
                (obj.item_id, self.reporter.event_row(
                    "forwarded", file_id=obj.file_id, destination=self.dest.name,
                    study_keys=list(keys[obj.item_id]), log_it=False))
                for obj in acked])
            for item_id in resolved:
                self.on_resolved(item_id)
        for obj, err in zip(objs, results, strict=True):
            if err is None:
                continue
            self.reporter.delivery_failed(self.dest.name, str(err), auth=err.auth)
            if err.permanent:
                self.on_permanent(obj.item_id, self.dest.name, err)
            elif err.auth:
                self._pause(str(err))
                self.journal.delivery_retry(obj.item_id, self.dest.name, self.clock(), str(err))
            else:
                attempts = next((d.attempts for d in batch if d.item_id == obj.item_id), 0)
                delay = self.backoff.delay(attempts)
                log.info("destination %s: %s; retry of %s in %.1fs", self.dest.name, err,
                         obj.file_id, delay)
                self.journal.delivery_retry(obj.item_id, self.dest.name, self.clock() + delay,
                                            str(err))

    def _pause(self, error: str) -> None:
        self.reporter.delivery_failed(self.dest.name, error, auth=True)
        with self._cond:
            self._paused_until = self.clock() + self.backoff.delay(self._pause_attempts)
            self._pause_attempts += 1
