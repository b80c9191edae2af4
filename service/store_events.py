"""Store: agent events (deduplicated, keyed study hashes), stored objects, totals, pruning."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from protocol.wire import Event
from service import tables
from service.store_base import StoreBase, _float, clean_text


@dataclass(frozen=True)
class EventRow:
    at: float
    kind: str
    severity: str
    message: str
    file_id: str | None
    destination: str | None


class EventsStore(StoreBase):
    """Events and objects as agents report them, and the dashboard's queries over them."""

    def record_events(self, agent_id: str, events: list[Event]) -> int:
        """Insert events, ignoring ones already received (a resent batch); returns new ones."""
        if not events:
            return 0
        now = self._clock()
        rows = [
            {
                "agent_id": agent_id,
                "event_id": clean_text(e.event_id, 64),
                "at": _float(e.at) or 0.0,
                "received_at": now,
                "kind": e.kind,
                "severity": e.severity,
                "message": clean_text(e.message, 512) or "",
                "file_id": clean_text(e.file_id, 64),
                "destination": clean_text(e.destination, 64),
            }
            for e in events
        ]
        stmt = (
            self._insert(tables.events)
            .on_conflict_do_nothing(index_elements=["agent_id", "event_id"])
            .returning(tables.events.c.id)
        )
        keyed = [
            {
                "study_key": key,
                "agent_id": agent_id,
                "event_id": row["event_id"],
                "at": row["at"],
                "received_at": now,
                "kind": row["kind"],
                "destination": row["destination"],
                "file_id": row["file_id"],
            }
            for e, row in zip(events, rows, strict=True)
            for key in dict.fromkeys(e.study_keys)
        ]
        with self._write() as conn:
            # RETURNING lists only inserted rows (driver rowcounts differ for executemany)
            added = len(conn.execute(stmt, rows).all())
            if keyed:
                conn.execute(self._insert(tables.study_events).on_conflict_do_nothing(), keyed)
            return added

    def record_object(self, sha256: str, size: int, agent_id: str) -> bool:
        """Remember a stored object; False if it was already known."""
        stmt = (
            self._insert(tables.objects)
            .values(sha256=sha256, size=size, agent_id=agent_id, stored_at=self._clock())
            .on_conflict_do_nothing(index_elements=["sha256"])
        )
        with self._write() as conn:
            return bool(conn.execute(stmt).rowcount)

    def recent_events(self, agent_id: str, limit: int = 50) -> list[EventRow]:
        e = tables.events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(e.c.at, e.c.kind, e.c.severity, e.c.message, e.c.file_id, e.c.destination)
                .where(e.c.agent_id == agent_id)
                .order_by(e.c.at.desc(), e.c.id.desc())
                .limit(limit)
            ).all()
        return [EventRow(*row) for row in rows]

    def event_times(self, agent_id: str, kind: str, since: float) -> list[float]:
        e = tables.events
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(e.c.at).where(
                        e.c.agent_id == agent_id, e.c.kind == kind, e.c.at >= since
                    )
                ).scalars()
            )

    def event_counts(self, kind: str, since: float) -> dict[str, int]:
        """Events of ``kind`` per agent since ``since`` (agent clock)."""
        e = tables.events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(e.c.agent_id, sa.func.count())
                .where(e.c.kind == kind, e.c.at >= since)
                .group_by(e.c.agent_id)
            ).all()
        return {agent_id: int(count) for agent_id, count in rows}

    def totals(self) -> dict[str, int]:
        """Fleet-wide counts for ``/metrics``."""
        with self._read() as conn:
            objects_count, objects_bytes = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(tables.objects.c.size), 0))
            ).one()
            events_count = conn.execute(
                sa.select(sa.func.count()).select_from(tables.events)
            ).scalar_one()
        return {
            "objects": int(objects_count),
            "object_bytes": int(objects_bytes),
            "events": int(events_count),
        }

    def prune(self, event_retention_s: float) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                tables.events.delete().where(tables.events.c.received_at < now - event_retention_s)
            )
            conn.execute(tables.sessions.delete().where(tables.sessions.c.expires_at < now))
            conn.execute(
                tables.study_events.delete().where(
                    tables.study_events.c.received_at < now - event_retention_s
                )
            )
            oldest_bucket = int((now - 8 * 86400) // tables.SAMPLE_PERIOD_S)
            conn.execute(
                tables.agent_samples.delete().where(tables.agent_samples.c.bucket < oldest_bucket)
            )
