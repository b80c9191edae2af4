"""Settled file → protected spool artifacts + deliveries, quarantine, and the final step.

The plaintext is read, never changed here: a protect worker (a child process, see
``agent.protect``) writes the protected copies into the spool, and the journal records
the item, its artifacts and deliveries in one transaction. Only :meth:`Pipeline.finalize_many`,
once no delivery is pending or refused, applies the folder's ``after_ack`` to the plaintext.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import crashpoints
from agent.config import AgentConfig, FolderConfig
from agent.journal import Artifact, Item, Journal, same_version, uids_column
from agent.outcome import Outcome, Result
from agent.pool import WorkerLost, WorkerPool, WorkerStartFailed
from agent.spool import Spool, fsync_dir
from agent.status import Reporter
from agent.watch import Settled

log = logging.getLogger(__name__)

#: A file whose protection fails in a way that may not recur (worker killed or lost, an
#: unexpected error, a copy that did not verify) is quarantined after this many attempts.
MAX_ATTEMPTS = 3
#: The cipher's input errors are permanent (same input, same error): one confirmation.
PERMANENT_ATTEMPTS = 2
#: Free space the spool volume must keep beyond a file's copies before it is protected.
SPACE_MARGIN = 4 << 20


class Pipeline:
    def __init__(self, config: AgentConfig, journal: Journal, reporter: Reporter,
                 clock: Callable[[], float] = time.monotonic,
                 timeout_base_s: float = 30.0, timeout_bytes_per_s: float = 5e6,
                 spool: Spool | None = None) -> None:
        self.config, self.journal, self.reporter = config, journal, reporter
        self.clock = clock
        self.spool = spool or Spool(config.spool_dir)
        # A worker gets this long per file before it is killed: generous, since only a
        # genuinely stuck call should ever hit it (the cipher runs at hundreds of MB/s).
        self.timeout_base_s, self.timeout_bytes_per_s = timeout_base_s, timeout_bytes_per_s
        self._attempts: dict[tuple[str, int, int], int] = {}

    # -- protection ------------------------------------------------------------------------
    def timeout_for(self, size: int) -> float:
        """Seconds a worker may take for a file of ``size`` bytes before it is killed."""
        return self.timeout_base_s + size / self.timeout_bytes_per_s

    def has_room_for(self, size: int) -> bool:
        """Whether the spool volume can take this file's copies (at most two modes) and
        still keep a margin: protections never run the volume full."""
        try:
            free = self.reporter.disk_free(self.config.spool_dir)
        except OSError:
            return True
        return free >= 2 * size + SPACE_MARGIN

    def process(self, s: Settled, pool: WorkerPool) -> Result:
        folder = self.config.folder(s.folder)
        if folder is None:
            return Result(Outcome.VANISHED)
        # No stat here: the worker checks size and mtime right before and after it reads.
        existing = self.journal.find(s.path, s.size, s.mtime_ns)
        if existing is not None and existing.state != "requeued":
            return Result(Outcome.KNOWN, existing.id)
        eid = existing.id if existing else None
        if not self.has_room_for(s.size):
            return self._no_space()
        grace_over = self.clock() - s.first_seen >= self.config.incomplete_grace_s
        names = {mode: self.spool.new_name(mode) for mode in ("file", "dicom")}
        request = {"path": s.path, "size": s.size, "mtime_ns": s.mtime_ns,
                   "modes": [self.config.destination(n).mode for n in folder.destinations],
                   "follow_symlinks": folder.follow_symlinks, "accept_truncated": grace_over,
                   "names": names, "dicom_policy": folder.dicom_policy,
                   "dicom_options": list(folder.dicom_options),
                   "pseudonym_secret_file": (str(self.config.pseudonym_secret_file)
                                             if self.config.pseudonym_secret_file else None)}
        try:
            answer = pool.call(request, self.timeout_for(s.size))
        except WorkerStartFailed as exc:
            self.reporter.event("error", "error", f"{exc}; files wait in place")
            return Result(Outcome.WORKER_DOWN, eid)
        except WorkerLost as exc:
            self.spool.discard(names.values())  # copies it may have made before dying
            if exc.collateral:  # it died on another file: no attempt of this one counted
                return Result(Outcome.RETRY, eid)
            return self._failed(s, existing, str(exc), permanent=False)
        if answer.get("warnings"):
            # Library warnings quote dataset values: only their categories are logged.
            log.info("protect worker: library warning(s) suppressed: %s",
                     ", ".join(f"{k} x{v}" for k, v in sorted(answer["warnings"].items())))
        status = answer.get("status")
        if status == "protected":
            self._attempts.pop((s.path, s.size, s.mtime_ns), None)
            return self._record(s, folder, existing, answer)
        if status == "vanished":
            if existing is not None:
                self.journal.set_state(existing.id, "vanished")
            return Result(Outcome.VANISHED, eid)
        if status == "changed":
            return Result(Outcome.CHANGED, eid)
        if status == "incomplete":
            return Result(Outcome.INCOMPLETE)
        if status == "oserror":
            if int(answer.get("errno", 0)) in (errno.ENOSPC, errno.EDQUOT):
                return self._no_space()
            self.reporter.event("error", "error",
                                f"protect failed: {answer.get('strerror', 'I/O error')}")
            return Result(Outcome.NO_SPACE, eid)
        return self._failed(s, existing, str(answer.get("reason") or "protect worker error"),
                            permanent=bool(answer.get("permanent")))

    def _no_space(self) -> Result:
        # One event however many files wait (the reporter drops repeats): a full volume
        # must not fill the journal with error bookkeeping.
        self.reporter.event("error", "warning",
                            "spool volume nearly full: protection waits, files stay in place")
        return Result(Outcome.NO_SPACE)

    def _failed(self, s: Settled, existing: Item | None, reason: str,
                permanent: bool) -> Result:
        """Bounded attempts, then quarantine (the plaintext stays where it is)."""
        key = (s.path, s.size, s.mtime_ns)
        attempts = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempts
        if attempts >= (PERMANENT_ATTEMPTS if permanent else MAX_ATTEMPTS):
            self._attempts.pop(key, None)
            why = reason if permanent else f"protection failed {attempts} times ({reason})"
            return self._quarantine_new(s, existing, why)
        self.reporter.event("error", "warning", f"{reason}; trying again",
                            file_id=self.journal.file_id(s.path))
        return Result(Outcome.RETRY, existing.id if existing else None)

    def _record(self, s: Settled, folder: FolderConfig, existing: Item | None,
                answer: dict[str, Any]) -> Result:
        plan = answer["plan"]
        arts = [Artifact(0, str(a["mode"]), str(a["name"]), str(a["sha256"]), int(a["size"]),
                         a.get("sop_instance_uid"), uids_column(a.get("uids")))
                for a in answer["artifacts"]]
        flags = [str(f) for f in answer.get("flags", [])]
        refusal = ("dicom mode cannot carry this file"
                   + (" (truncated dicom)" if "truncated" in flags else "")
                   + "; protected in file mode for the other destinations")
        deliveries: list[tuple[str, ...]] = []
        for name, mode in zip(folder.destinations, plan, strict=True):
            if mode:
                deliveries.append((name, mode, "pending"))
            elif answer.get("dicom_file") and self.config.destination(name).mode == "dicom":
                # A DICOM file this destination cannot take is not "not for it": it waits
                # for an operator, and the plaintext with it.
                deliveries.append((name, "dicom", "quarantined", refusal))
            else:
                deliveries.append((name, "-", "skipped"))
        file_id = self.journal.file_id(s.path)
        message = "flagged: " + ", ".join(flags) if flags else ""
        study_keys = list(dict.fromkeys(
            str(k) for a in answer["artifacts"] for k in a.get("study_keys") or []))[:4]
        crashpoints.reached("journal.before_protected")
        item_id = self.journal.record_protected(
            existing.id if existing else None, s.path, s.size, s.mtime_ns, folder.key,
            s.settled_at or None, str(answer["sha256"]), arts, deliveries,
            event=self.reporter.event_row("protected", message=message, file_id=file_id,
                                          study_keys=study_keys),
            study_keys=study_keys)
        crashpoints.reached("journal.after_protected")
        if item_id is None:
            self.spool.discard(a.name for a in arts)  # only the mtime changed: same scan
            return Result(Outcome.DUPLICATE, existing.id if existing else None)
        if flags:
            self.reporter.count("flagged")
        return Result(Outcome.PROTECTED, item_id,
                      resolved=not any(d[2] == "pending" for d in deliveries))

    # -- quarantine ------------------------------------------------------------------------
    def _note(self, item: Item, reason: str) -> None:
        # The note stays on this machine (like the plaintext it points to).
        text = (f"reason: {reason}\nfile_id: {item.file_id}\npath: {item.path}\n"
                f"at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        for d in self.journal.delivery_states(item.id):
            if d.state == "quarantined":
                text += f"destination {d.dest}: {d.last_error}\n"
        self.spool.write_note(item.id, text)

    def _quarantine_new(self, s: Settled, existing: Item | None, reason: str) -> Result:
        file_id = self.journal.file_id(s.path)
        event = self.reporter.event_row("quarantined", "warning", reason, file_id=file_id)
        if existing is not None:
            self.journal.set_state(existing.id, "quarantined", reason, counter="quarantined",
                                   event=event)
            item = self.journal.item(existing.id)
        else:
            item = self.journal.add_quarantined(s.path, s.size, s.mtime_ns, s.folder, reason,
                                                s.settled_at or None, event=event)
        self._note(item, reason)
        return Result(Outcome.QUARANTINED, item.id)

    def quarantine(self, item_id: int, reason: str) -> None:
        """Park a whole item (its copies are dropped); the plaintext stays in place."""
        item = self.journal.item(item_id)
        self.spool.discard(a.name for a in self.journal.artifacts(item_id).values())
        self.journal.set_state(item_id, "quarantined", reason, counter="quarantined",
                               event=self.reporter.event_row("quarantined", "warning", reason,
                                                             file_id=item.file_id))
        self._note(self.journal.item(item_id), reason)

    def discard_artifacts(self, item_id: int) -> None:
        self.spool.discard(a.name for a in self.journal.artifacts(item_id).values())

    # -- once nothing is pending -----------------------------------------------------------
    def finalize(self, item_id: int) -> None:
        self.finalize_many([item_id])

    def finalize_many(self, item_ids: list[int]) -> None:
        """Items with nothing pending: apply ``after_ack`` to the plaintext, drop their
        spool artifacts and mark them done; an item with a refused delivery is quarantined
        instead (its copies kept for a retry), one whose folder left the config is held.

        One journal sync covers the whole batch: every acknowledgement is on disk before
        the first irreversible step. A crash in between leaves items ``protected`` with
        nothing pending, which the next start finalizes again (moves and deletes of a
        plaintext already gone are skipped).
        """
        ready: list[tuple[Item, FolderConfig]] = []
        items = [it for it in self.journal.items_of(item_ids)
                 if it.state in ("protected", "releasing")]
        all_states = self.journal.delivery_states_of([it.id for it in items])
        for item in items:
            folder = self.config.folder(item.folder)
            if folder is None:
                if item.state == "protected":  # (``held`` always returns to ``protected``)
                    self.journal.set_state(item.id, "held", "its folder is no longer in the "
                                           "config; nothing is touched until it is back")
                    log.warning("item of %s held: its folder left the config", item.file_id)
                continue
            states = all_states[item.id]
            if item.state == "protected":
                if any(d.state == "pending" for d in states):
                    continue
                refused = [d for d in states if d.state == "quarantined"]
                if refused:
                    reason = "refused by " + ", ".join(d.dest for d in refused)
                    self.journal.set_state(item.id, "quarantined", reason)
                    self._note(self.journal.item(item.id), reason)
                    continue
            ready.append((item, folder))
        # A plaintext already gone (a resumed finalize, or removed by someone) or changed
        # since is left alone.
        touch = [(it, f) for it, f in ready if it.size > 0 and f.after_ack != "keep"
                 and same_version(it.path, it.size, it.mtime_ns)]
        if touch:
            self.journal.sync()
            crashpoints.reached("finalize.before_after_ack")
        for item, folder in touch:
            self._after_ack(item, folder)
        if touch:
            crashpoints.reached("finalize.after_after_ack")
        names = self.journal.artifact_names_of([it.id for it, _ in ready])
        self.journal.set_done([it.id for it, _ in ready])
        self.spool.discard(names)
        for item, _ in ready:
            if item.reason is not None or item.state == "releasing":  # it had a note
                self.spool.remove_note(item.id)

    @staticmethod
    def _after_ack(item: Item, folder: FolderConfig) -> None:
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
