"""The gateway store on SQLite and PostgreSQL: users, tokens, the one audit chain, the index.

The PostgreSQL cases run a throw-away cluster on loopback (the central service's fixture);
the last test runs two real ``scanfort gateway run`` processes on one PostgreSQL database in
front of one Orthanc and checks that their audit entries form a single verified chain.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from cipher import keys
from gateway import audit, tables
from gateway.audit import AuditEvent
from gateway.security import IndexSeal
from gateway.store import Store
from tests import gateway_data as data
from tests import peers
from tests.test_service_api import _new_pg_database, postgres_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gw.sqlite3'}"
    server = request.getfixturevalue("postgres_server")
    return _new_pg_database(server).replace("postgresql://", "postgresql+psycopg://")


def _event(i: int, user: str = "rita") -> AuditEvent:
    return AuditEvent(user, "127.0.0.1", "retrieve", "ok", "1.2.3", "1.2.3.4", f"1.2.3.4.{i}")


def test_two_stores_appending_concurrently_make_one_unbroken_chain(db_url: str) -> None:
    a, b = Store(db_url), Store(db_url)
    a.create_schema()
    b.create_schema()
    a.process, b.process = "gw-a:1", "gw-b:2"

    def write(store: Store, base: int) -> None:
        for i in range(25):
            store.append_audit([_event(base + i), _event(base + i + 1000)])

    threads = [threading.Thread(target=write, args=(s, k * 100))
               for k, s in enumerate([a, b, a, b])]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = list(a.iter_audit(batch=37))
    assert audit.verify_chain(entries) == 200
    assert [e.seq for e in entries] == list(range(1, 201))
    assert {e.process for e in entries} == {"gw-a:1", "gw-b:2"}
    a.close()
    b.close()


def test_edits_deletions_and_a_cut_tail_are_detected(db_url: str) -> None:
    store = Store(db_url)
    store.create_schema()
    for i in range(6):
        store.append_audit([_event(i)])
    head = list(store.iter_audit())[-1].hash
    assert audit.verify_chain(store.iter_audit(), head) == 6
    with store.engine.begin() as conn:
        conn.execute(tables.audit.update().where(tables.audit.c.seq == 2).values(outcome="denied"))
    with pytest.raises(audit.AuditChainError, match="entry 2: content"):
        audit.verify_chain(store.iter_audit())
    with store.engine.begin() as conn:
        conn.execute(tables.audit.delete().where(tables.audit.c.seq == 2))
    with pytest.raises(audit.AuditChainError, match="entry 2 missing"):
        audit.verify_chain(store.iter_audit())
    store2 = Store(db_url)
    with store2.engine.begin() as conn:
        conn.execute(tables.audit.delete().where(tables.audit.c.seq <= 2))
        conn.execute(tables.audit.delete().where(tables.audit.c.seq >= 6))
    store2.close()
    with pytest.raises(audit.AuditChainError):
        audit.verify_chain(store.iter_audit(), head)
    store.close()


def test_every_event_field_is_covered_by_the_entry_hash_and_long_fields_are_bounded(
    tmp_path: Path,
) -> None:
    base = AuditEvent("rita", "10.0.0.1", "retrieve", "ok", "1.2", "1.2.3", "1.2.3.4", "d")
    h = audit.entry_hash(audit.GENESIS, 1, 5.0, base, "gw:1")
    for f in dataclasses.fields(AuditEvent):  # a field added later must be hashed too
        changed = dataclasses.replace(base, **{f.name: getattr(base, f.name) + "x"})
        assert audit.entry_hash(audit.GENESIS, 1, 5.0, changed, "gw:1") != h, f.name
    store = Store(f"sqlite:///{tmp_path / 'gw.sqlite3'}")
    store.create_schema()
    long = dataclasses.replace(base, username="u" * 100, client="c" * 100, detail="d" * 900)
    [entry] = store.append_audit([long])
    assert (len(entry.username), len(entry.client), len(entry.detail)) == (64, 64, 500)
    assert list(store.iter_audit()) == [entry]
    assert audit.verify_chain(store.iter_audit()) == 1
    store.close()


def test_users_roles_logins_and_tokens(db_url: str) -> None:
    now = [1000.0]
    store = Store(db_url, clock=lambda: now[0])
    store.create_schema()
    with pytest.raises(ValueError, match="roles"):
        store.set_user("eve", "pw", ["root"])
    store.set_user("rita", "secret-1", ["reader"])
    principal, recent = store.check_login("rita", "secret-1")
    assert principal is not None and principal.has("reader") and not principal.has("auditor")
    assert store.check_login("rita", "nope") == (None, 0)
    assert store.check_login("rita", "nope again") == (None, 1)
    assert store.check_login("nobody", "x") == (None, 0)
    ok, recent = store.check_login("rita", "secret-1")
    assert ok is not None and recent == 2  # the delay still applies to this success
    assert store.check_login("rita", "secret-1")[1] == 0
    token = store.create_token("rita", 60, "session")
    assert store.authenticate_token(token, "session") is not None
    assert store.authenticate_token(token, "api") is None  # a cookie is not a bearer token
    now[0] += 61
    assert store.authenticate_token(token, "session") is None
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.execute(sa.select(tables.sessions.c.token_hash))]
    assert token not in stored  # only hashes are kept
    store.close()


def test_index_rows_are_sealed_to_the_site_identity_and_their_uid(db_url: str) -> None:
    identity, _ = keys.generate_identity()
    seal = IndexSeal([identity])
    sealed = seal.seal("1.2.3", b'{"00100020": "PAT-1"}')
    assert b"PAT-1" not in sealed
    assert seal.open("1.2.3", sealed) == b'{"00100020": "PAT-1"}'
    with pytest.raises(InvalidTag):
        seal.open("1.2.4", sealed)  # moved onto another instance's row
    with pytest.raises(InvalidTag):
        IndexSeal([keys.generate_identity()[0]]).open("1.2.3", sealed)
    store = Store(db_url)
    store.create_schema()
    store.put_index([("1.2.3", "9", "8", sealed)])
    store.put_index([("1.2.3", "9", "8", sealed), ("1.2.5", "9", "7", sealed)])
    assert store.index_counts() == {"9": 2}
    store.clear_index("9")
    assert store.index_rows() == []
    store.close()


@pytest.mark.peer
def test_two_gateway_processes_on_one_postgresql_share_one_audit_chain(
    postgres_server: str, tmp_path: Path  # noqa: F811
) -> None:
    url = _new_pg_database(postgres_server)
    identity, recipient = keys.generate_identity()
    (tmp_path / "site.key").write_text(identity + "\n")
    patient = data.Patient("PAT-PG", "PG^TEST", "ACCPG", "20240101")
    series = data.ct_series(patient, 3)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCANFORT_GATEWAY_PASSWORD": "pg-password-1"}
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        for raw in series:
            orthanc.upload(data.protect(raw, recipient))
        procs: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        try:
            for name in ("a", "b"):
                data_dir = tmp_path / name
                subprocess.run(
                    [sys.executable, "-m", "scanfort", "gateway", "init", "--data-dir",
                     str(data_dir), "--db", url, "--identity", str(tmp_path / "site.key"),
                     "--upstream", orthanc.dicomweb_url],
                    check=True, env=env, capture_output=True,
                )  # fmt: skip
                port = peers.free_port()
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "scanfort", "gateway", "run", "--data-dir",
                     str(data_dir), "--port", str(port), "--log-level", "warning"],
                    env=env, stdin=subprocess.DEVNULL,
                ))  # fmt: skip
                ports.append(port)
            for port, proc in zip(ports, procs, strict=True):
                peers.wait_for_port(port, proc)
            st, se, _ = data.uids(series[0])

            def read(port: int) -> None:
                for _ in range(5):
                    r = requests.get(f"http://127.0.0.1:{port}/dicom-web/studies/{st}/series/{se}",
                                     auth=("admin", "pg-password-1"), timeout=30)  # fmt: skip
                    assert r.status_code == 200

            threads = [threading.Thread(target=read, args=(p,)) for p in ports * 2]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    store = Store(url.replace("postgresql://", "postgresql+psycopg://"))
    entries = list(store.iter_audit())
    store.close()
    retrieves = [e for e in entries if e.operation == "retrieve"]
    assert len(retrieves) == 4 * 5 * 3
    assert len({e.process for e in retrieves}) == 2
    assert audit.verify_chain(entries) == len(entries)
    verify = subprocess.run(
        [sys.executable, "-m", "scanfort", "gateway", "audit", "verify", "--data-dir",
         str(tmp_path / "a")], env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and f"{len(entries)} entries" in verify.stdout
