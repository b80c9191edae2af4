"""Settled file → protected spool artifacts + pending deliveries, and the final step.

The plaintext is read, never changed here: a protect worker (a child process, see
``agent.worker``) writes the protected copies into the spool, and the journal records the
item, its artifacts and deliveries in one transaction. Only :meth:`Pipeline.finalize`,
once every destination acknowledged, applies the folder's ``after_ack`` to the plaintext.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.journal import Artifact, Item, Journal, fsync_dir, same_version
from agent.status import Reporter
from agent.watch import Settled
from agent.worker import WorkerLost, WorkerPool, WorkerStartFailed

log = logging.getLogger(__name__)

#: A file whose protection kills or overruns its worker this many times is quarantined.
MAX_WORKER_LOSSES = 3


@dataclass(frozen=True)
class Outcome:
    kind: str  # protected | known | changed | incomplete | retry | worker_down | quarantined | vanished | duplicate
    item_id: int | None = None


class Pipeline:
    def __init__(self, config: AgentConfig, journal: Journal, reporter: Reporter,
                 clock: Callable[[], float] = time.monotonic,
                 timeout_base_s: float = 30.0, timeout_bytes_per_s: float = 5e6) -> None:
        self.config, self.journal, self.reporter = config, journal, reporter
        self.clock = clock
        # A worker gets this long per file before it is killed: generous, since only a
        # genuinely stuck call should ever hit it (the cipher runs at hundreds of MB/s).
        self.timeout_base_s, self.timeout_bytes_per_s = timeout_base_s, timeout_bytes_per_s
        self._losses: dict[str, int] = {}
        config.spool_dir.mkdir(parents=True, exist_ok=True)
        config.quarantine_dir.mkdir(parents=True, exist_ok=True)

    # -- protection ------------------------------------------------------------------------
    def timeout_for(self, size: int) -> float:
        """Seconds a worker may take for a file of ``size`` bytes before it is killed."""
        return self.timeout_base_s + size / self.timeout_bytes_per_s

    def process(self, s: Settled, pool: WorkerPool) -> Outcome:
        try:
            st = os.stat(s.path)
        except OSError:
            return Outcome("vanished")
        if (st.st_size, st.st_mtime_ns) != (s.size, s.mtime_ns):
            return Outcome("changed")
        existing = self.journal.find(s.path, s.size, s.mtime_ns)
        if existing is not None and existing.state != "discovered":
            return Outcome("known", existing.id)
        eid = existing.id if existing else None
        folder = self.config.folders[s.folder]
        request = {"path": s.path, "size": s.size, "mtime_ns": s.mtime_ns,
                   "modes": [self.config.destination(n).mode for n in folder.destinations]}
        try:
            answer = pool.call(request, self.timeout_for(s.size))
        except WorkerStartFailed as exc:
            self.reporter.event("error", "error", f"{exc}; files wait in place")
            return Outcome("worker_down", eid)
        except WorkerLost as exc:
            return self._lost(s, existing, str(exc))
        self._losses.pop(s.path, None)
        status = answer.get("status")
        if status == "protected":
            return self._record(s, existing, answer)
        if status == "vanished":
            if existing is not None:
                self.journal.set_state(existing.id, "vanished")
            return Outcome("vanished", eid)
        if status == "changed":
            return Outcome("changed", eid)
        if status == "incomplete":
            if self.clock() - s.first_seen < self.config.incomplete_grace_s:
                return Outcome("incomplete")
            return self._quarantine(self._item(s, existing),
                                    "dicom file ends inside an element (truncated) and did "
                                    "not change during the grace period")
        if status == "oserror":
            # Spool full or unwritable: the runner parks the file, it is still in place.
            raise OSError(int(answer.get("errno", 0)), str(answer.get("strerror", "error")))
        if status == "unplannable":
            return self._quarantine(self._item(s, existing), str(answer.get("reason")))
        # An unexpected error inside the worker: not the file's fault, try again later.
        self.reporter.event("error", "warning", f"protect worker: {answer.get('reason')}",
                            file_id=self.journal.file_id(s.path))
        return Outcome("retry", eid)

    def _record(self, s: Settled, existing: Item | None, answer: dict[str, object]) -> Outcome:
        folder = self.config.folders[s.folder]
        plan = answer["plan"]
        assert isinstance(plan, list)
        arts = [Artifact(0, str(a["mode"]), str(a["name"]), str(a["sha256"]), int(a["size"]),
                         a.get("sop_instance_uid"))
                for a in answer["artifacts"]]  # type: ignore[attr-defined]
        deliveries = [(name, mode or "-", "pending" if mode else "skipped")
                      for name, mode in zip(folder.destinations, plan, strict=True)]
        file_id = self.journal.file_id(s.path)
        item_id = self.journal.record_protected(
            existing.id if existing else None, s.path, s.size, s.mtime_ns, s.folder,
            s.settled_at or None, str(answer["sha256"]), arts, deliveries,
            event=self.reporter.event_row("protected", file_id=file_id))
        if item_id is None:
            self._discard(arts)  # only the mtime changed: same scan, already sent
            return Outcome("duplicate", existing.id if existing else None)
        return Outcome("protected", item_id)

    def _lost(self, s: Settled, existing: Item | None, why: str) -> Outcome:
        """The worker died or was killed on this file: retry, and give up after a few."""
        losses = self._losses.get(s.path, 0) + 1
        self._losses[s.path] = losses
        file_id = self.journal.file_id(s.path)
        if losses >= MAX_WORKER_LOSSES:
            self._losses.pop(s.path, None)
            return self._quarantine(self._item(s, existing),
                                    f"protection failed {losses} times ({why})")
        self.reporter.event("error", "warning", f"{why}; retrying with a fresh key",
                            file_id=file_id)
        return Outcome("retry", existing.id if existing else None)

    def _item(self, s: Settled, existing: Item | None) -> Item:
        return existing or self.journal.add_item(s.path, s.size, s.mtime_ns, s.folder,
                                                 s.settled_at or None)

    def _discard(self, artifacts: list[Artifact]) -> None:
        for art in artifacts:
            try:
                (self.config.spool_dir / art.name).unlink()
            except OSError:
                pass

    def _quarantine(self, item: Item, reason: str) -> Outcome:
        """Park an item that can never be delivered; the plaintext stays where it is."""
        note = self.config.quarantine_dir / f"{item.id:010d}.reason.txt"
        # The reason file stays on this machine (like the plaintext it points to).
        text = (f"reason: {reason}\nfile_id: {item.file_id}\npath: {item.path}\n"
                f"at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        tmp = note.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, note)
        self.journal.set_state(item.id, "quarantined", reason, counter="quarantined")
        self.reporter.event("quarantined", severity="warning", message=reason,
                            file_id=item.file_id)
        return Outcome("quarantined", item.id)

    def discard_artifacts(self, item_id: int) -> None:
        self._discard(list(self.journal.artifacts(item_id).values()))

    def quarantine(self, item_id: int, reason: str) -> None:
        item = self.journal.item(item_id)
        self.discard_artifacts(item_id)
        self._quarantine(item, reason)

    # -- after every destination acknowledged ---------------------------------------------
    def finalize(self, item_id: int) -> None:
        self.finalize_many([item_id])

    def finalize_many(self, item_ids: list[int]) -> None:
        """Apply ``after_ack`` to the plaintext of items whose deliveries are all resolved,
        drop their spool artifacts and mark them done.

        One journal sync covers the whole batch: every acknowledgement is on disk before
        the first irreversible step. A crash in between leaves items ``protected`` with
        nothing pending, which the next start finalizes again (moves and deletes of a
        plaintext already gone are skipped).
        """
        items = [it for it in (self.journal.item(i) for i in item_ids) if it.state == "protected"]
        touch: list[Item] = []
        for item in items:
            # A plaintext already gone (a resumed finalize, or removed by someone) or
            # changed since is left alone.
            if item.size > 0 and self.config.folders[item.folder].after_ack != "keep" \
                    and same_version(item.path, item.size, item.mtime_ns):
                touch.append(item)
        if touch:
            self.journal.sync()
        for item in touch:
            folder = self.config.folders[item.folder]
            try:
                if folder.after_ack == "delete":
                    os.unlink(item.path)
                elif folder.move_to is not None:
                    rel = Path(os.path.relpath(item.path, folder.path))
                    target = folder.move_to / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(item.path, target)
                    fsync_dir(target.parent)
            except OSError as exc:
                log.warning("cannot %s plaintext of %s: %s", folder.after_ack, item.file_id,
                            exc.strerror)
        for item in items:
            self.discard_artifacts(item.id)
        self.journal.set_done([item.id for item in items])
