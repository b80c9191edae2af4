"""Store plumbing: the engine (SQLite or PostgreSQL), transactions, schema, text limits.

Several central processes may share one PostgreSQL database, so nothing here keeps state
between calls except the engine: one-time enrollment tokens are consumed by a single
conditional ``UPDATE`` (exactly one caller wins), sessions live in the database.

On SQLite, writes take ``BEGIN IMMEDIATE`` (no read-then-upgrade deadlocks) behind an
in-process lock, so threads of one process queue instead of spinning on ``SQLITE_BUSY``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service import tables
from service.errors import NotInitializedError

_MAX_INT = 2**62


def clean_text(value: str | None, max_len: int = 512) -> str | None:
    """Text from an agent, made storable anywhere: no NUL, no lone surrogates, bounded."""
    if value is None:
        return None
    text = value[:max_len].replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")


def _int(value: float | int) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(0, min(int(value), _MAX_INT))


def _float(value: float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = min(value, _MAX_INT)
    result = float(value)
    return result if math.isfinite(result) else None



IDLE_PING_AFTER_S = 5.0


def make_engine(url: str, *, autocommit: bool = False) -> sa.Engine:
    """An engine for ``url``; ``autocommit`` (PostgreSQL): every statement commits itself."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            write = conn.get_execution_options().get("sf_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    extra: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = sa.create_engine(url, pool_size=8, max_overflow=8, **extra)

    # Pessimistic disconnect handling, but only for connections idle a while: a ping on
    # every checkout cost a round trip per transaction (0.8 ms CPU of a heartbeat's 3.7 ms
    # on PostgreSQL). A connection in steady use is not pinged; one idle for
    # IDLE_PING_AFTER_S is, and a dead one is replaced before the request uses it.
    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["sf_checkin"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("sf_checkin", 0.0) <= IDLE_PING_AFTER_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: let the pool open a fresh connection
            raise sa.exc.DisconnectionError() from exc
        if not alive:
            raise sa.exc.DisconnectionError()

    return engine


class StoreBase:
    """The engine and transactions every part of :class:`service.store.Store` builds on."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._clock = clock
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        # PostgreSQL: a second pool whose connections autocommit, for hot paths that are one
        # statement (a heartbeat): no BEGIN/COMMIT round trips around it. Opened on first use.
        self._url = url
        self._autocommit_engine: sa.Engine | None = None
        self._autocommit_lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()
        if self._autocommit_engine is not None:
            self._autocommit_engine.dispose()

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[sa.Connection]:
        """A connection whose every statement is its own transaction (PostgreSQL only)."""
        engine = self._autocommit_engine
        if engine is None:
            with self._autocommit_lock:
                if self._autocommit_engine is None:
                    self._autocommit_engine = make_engine(self._url, autocommit=True)
                engine = self._autocommit_engine
        with engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(sf_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def create_schema(self) -> None:
        """Create missing tables; safe when several processes start at once."""
        for attempt in range(5):
            try:
                tables.metadata.create_all(self.engine, checkfirst=True)
                break
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))  # another process created it concurrently
        self._add_missing_columns()
        with self._write() as conn:
            stmt = self._insert(tables.meta).values(
                key="schema_version", value=str(tables.SCHEMA_VERSION)
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key"], set_={"value": str(tables.SCHEMA_VERSION)}
                )
            )

    def _add_missing_columns(self) -> None:
        """Bring a version-1 database up to date: nullable columns only, so it is additive."""
        for attempt in range(5):
            present = {
                name: {c["name"] for c in sa.inspect(self.engine).get_columns(name)}
                for name in {t.name for t, _ in tables.ADDED_COLUMNS}
            }
            missing = [(t, c) for t, c in tables.ADDED_COLUMNS if c not in present[t.name]]
            if not missing:
                return
            try:
                with self._write() as conn:
                    for table, column in missing:
                        col = table.c[column]
                        kind = col.type.compile(dialect=self.engine.dialect)
                        conn.exec_driver_sql(
                            f'ALTER TABLE {table.name} ADD COLUMN "{column}" {kind}'
                        )
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))  # another process added them concurrently

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def check_initialized(self) -> None:
        try:
            with self._read() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar()
        except sa.exc.DBAPIError as exc:
            raise NotInitializedError(f"database not initialized: {exc.orig}") from exc
        if not count:
            raise NotInitializedError("database has no admin user")
