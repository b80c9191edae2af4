"""The central's object store backends: filesystem and S3 (a real SeaweedFS on loopback).

Both backends get the same contract tests (content-addressed, idempotent, forged uploads
refused, corruption detected on read through the gateway's authenticated read); the S3
backend also gets multipart, an S3 outage (503 to the agent, nothing lost) and two central
processes that share only a PostgreSQL database and a bucket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from agent.config import CentralConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Outgoing
from agent.forward.central import CentralForwarder
from service import readers
from service.app import create_app
from service.bootstrap import initialize
from service.errors import ConfigError
from service.server import BackgroundServer
from service.settings import ObjectsSettings, Settings, load_settings
from service.store import Store
from tests.peers import central_run_command
from tests.s3server import S3Server, require_weed, start_seaweedfs
from tests.test_service_api import _new_pg_database, bearer, postgres_server  # noqa: F401

MIB = 1024**2


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    binary = require_weed()
    with start_seaweedfs(binary) as server:
        yield server


def s3_settings(server: S3Server, bucket: str, **extra: Any) -> ObjectsSettings:
    values: dict[str, Any] = {"access_key_id": server.access_key_id,
                              "secret_access_key": server.secret_access_key, **extra}  # fmt: skip
    return ObjectsSettings(backend="s3", endpoint=server.endpoint, bucket=bucket,
                           region=server.region, **values)  # fmt: skip


@dataclasses.dataclass
class Central:
    client: TestClient
    settings: Settings
    store: Store
    agent_token: str
    reader_token: str
    s3: S3Server | None
    bucket: str

    def keys(self) -> list[str]:
        if self.s3 is None:
            return sorted(p.name for p in self.settings.objects_dir.rglob("*")
                          if p.is_file() and p.parent.name != "tmp")  # fmt: skip
        listing = self.s3.client().list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", []))

    def corrupt(self, sha: str) -> None:
        """Change the stored bytes behind the central's back (bit rot, tampering)."""
        if self.s3 is None:
            path = self.settings.objects_dir / sha[:2] / sha[2:4] / sha
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
        else:
            key = f"{sha[:2]}/{sha[2:4]}/{sha}"
            body = self.s3.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.s3.client().put_object(Bucket=self.bucket, Key=key, Body=body[:-1] + b"\0")

    def tmp_files(self) -> list[Path]:
        tmp = self.settings.objects_dir / "tmp"
        return list(tmp.iterdir()) if tmp.exists() else []


def _central(tmp_path: Path, objects: ObjectsSettings, s3: S3Server | None,
             max_object_bytes: int = 64 * 1024) -> Iterator[Central]:  # fmt: skip
    settings = Settings(data_dir=tmp_path / "central", max_object_bytes=max_object_bytes,
                        objects=objects)  # fmt: skip
    store = Store(settings.database_url)
    store.create_schema()
    app = create_app(settings, store=store)
    with TestClient(app) as client:
        _id, token = store.mint_enrollment_token(3600)
        r = client.post("/api/v1/enroll", headers=bearer(token),
                        json={"host": "ct-1", "os": "Linux", "version": "0.1.0"})  # fmt: skip
        assert r.status_code == 200, r.text
        yield Central(client, settings, store, r.json()["agent_token"],
                      readers.mint_reader_token(store, "gateway"), s3, objects.bucket)  # fmt: skip
    store.close()


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.peer)])
def central(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Central]:
    if request.param == "filesystem":
        yield from _central(tmp_path, ObjectsSettings(), None)
        return
    server: S3Server = request.getfixturevalue("s3")
    bucket = server.new_bucket()
    yield from _central(tmp_path, s3_settings(server, bucket), server)


def _read(c: Central, sha: str) -> requests.Response | Any:
    return c.client.get(f"/api/v1/reader/objects/{sha}", headers=bearer(c.reader_token))


def test_objects_are_content_addressed_idempotent_and_read_back_verified(central: Central):
    data = os.urandom(20_000)
    sha = hashlib.sha256(data).hexdigest()
    url = f"/api/v1/objects/{sha}"
    auth = bearer(central.agent_token)
    assert central.client.head(url, headers=auth).status_code == 404
    assert _read(central, sha).status_code == 404
    first = central.client.put(url, content=data, headers=auth)
    assert first.status_code == 201 and first.json() == {"sha256": sha, "size": 20_000,
                                                         "created": True}  # fmt: skip
    again = central.client.put(url, content=data, headers=auth)
    assert again.status_code == 200 and again.json()["created"] is False
    assert central.keys() == [sha]  # the same SHA-256 twice is one object
    head = central.client.head(url, headers=auth)
    assert head.status_code == 200 and head.headers["content-length"] == "20000"
    got = _read(central, sha)
    assert got.status_code == 200 and got.content == data
    assert central.client.get(f"/api/v1/reader/objects/{sha}").status_code == 401

    forged_sha = hashlib.sha256(b"other bytes").hexdigest()
    r = central.client.put(f"/api/v1/objects/{forged_sha}", content=data, headers=auth)
    assert r.status_code == 422
    big = os.urandom(central.settings.max_object_bytes + 1)
    r = central.client.put(f"/api/v1/objects/{hashlib.sha256(big).hexdigest()}", content=big,
                           headers=auth)  # fmt: skip
    assert r.status_code == 413
    assert central.keys() == [sha]  # neither the forgery nor the oversized upload is visible
    assert central.tmp_files() == []
    health = central.client.get("/healthz")
    assert health.status_code == 200, health.text


def test_a_corrupted_object_is_refused_on_read(central: Central):
    data = os.urandom(30_000)
    sha = hashlib.sha256(data).hexdigest()
    assert central.client.put(f"/api/v1/objects/{sha}", content=data,
                              headers=bearer(central.agent_token)).status_code == 201  # fmt: skip
    central.corrupt(sha)
    r = _read(central, sha)
    assert r.status_code == 500 and "SHA-256" in r.json()["detail"]
    assert data not in r.content
    metrics = central.client.get("/metrics").text
    assert "scanfort_objects_corrupt_total 1" in metrics
    assert central.tmp_files() == []  # the S3 download was removed


@pytest.mark.peer
def test_large_objects_go_up_in_verified_parts(s3: S3Server, tmp_path: Path):
    bucket = s3.new_bucket()
    objects = s3_settings(s3, bucket, multipart_threshold_bytes=5 * MIB, part_size_bytes=5 * MIB)
    for c in _central(tmp_path, objects, s3, max_object_bytes=64 * MIB):
        data = os.urandom(12 * MIB + 12345)
        sha = hashlib.sha256(data).hexdigest()
        r = c.client.put(f"/api/v1/objects/{sha}", content=data, headers=bearer(c.agent_token))
        assert r.status_code == 201, r.text
        head = s3.client().head_object(Bucket=bucket, Key=f"{sha[:2]}/{sha[2:4]}/{sha}")
        assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
        assert head["Metadata"]["sha256"] == sha
        assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        got = _read(c, sha)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
        assert c.client.put(f"/api/v1/objects/{sha}", content=data,
                            headers=bearer(c.agent_token)).json()["created"] is False  # fmt: skip


@pytest.mark.peer
def test_s3_down_is_a_retryable_503_and_the_agent_keeps_its_copy(tmp_path: Path):
    binary = require_weed()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(start_seaweedfs(binary))
        bucket = server.new_bucket()
        objects = s3_settings(server, bucket, connect_timeout_s=1.0, read_timeout_s=5.0)
        init = initialize(tmp_path / "central", admin_password="pw", objects=objects)
        assert init.settings.objects.secret_access_key == server.secret_access_key
        assert server.secret_access_key not in repr(init.settings)  # never in a log line
        central = stack.enter_context(BackgroundServer(init.settings))
        enrolled = requests.post(f"{central.url}/api/v1/enroll", timeout=10,
                                 headers=bearer(init.enrollment_token),
                                 json={"host": "ct-2", "os": "Linux", "version": "1"}).json()  # fmt: skip
        sender = CentralForwarder(
            DestinationConfig(name="central", kind="central", timeout_s=20),
            CentralConfig(url=central.url, agent_id=enrolled["agent_id"],
                          token=enrolled["agent_token"]),
        )
        stack.callback(sender.close)

        def outgoing(name: str, data: bytes) -> Outgoing:
            path = tmp_path / name
            path.write_bytes(data)
            return Outgoing(item_id=1, file_id="0" * 16, path=path,
                            sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                            mode="file", relpath=name)  # fmt: skip

        before = outgoing("before.age", os.urandom(4000))
        sender.send(before)  # S3 up: acknowledged
        server.proc.terminate()
        server.proc.wait(10)

        during = outgoing("during.age", os.urandom(4000))
        with pytest.raises(DeliveryError, match="HTTP 503") as refused:
            sender.send(during)
        assert not refused.value.permanent and not refused.value.auth  # the agent retries
        assert during.path.read_bytes()  # its spooled copy is untouched
        r = requests.put(f"{central.url}/api/v1/objects/{during.sha256}", timeout=30,
                         data=during.path.read_bytes(),
                         headers=bearer(enrolled["agent_token"]))  # fmt: skip
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert server.secret_access_key not in r.text and server.access_key_id not in r.text
        assert "object store unavailable" in r.json()["detail"]
        head = requests.head(f"{central.url}/api/v1/objects/{before.sha256}", timeout=30,
                             headers=bearer(enrolled["agent_token"]))  # fmt: skip
        assert head.status_code == 503
        health = requests.get(f"{central.url}/healthz", timeout=30)
        assert health.status_code == 503 and "object store" in health.text
        assert (init.settings.objects_dir / "tmp").exists()
        assert list((init.settings.objects_dir / "tmp").iterdir()) == []
        metrics = requests.get(f"{central.url}/metrics", timeout=10).text
        assert "scanfort_object_store_unavailable_total 0" not in metrics


def test_objects_config_is_validated_and_credentials_can_come_from_a_file(tmp_path: Path):
    data = tmp_path / "c"
    data.mkdir()
    (data / "central.toml").write_text('[objects]\nbackend = "s3"\n')
    with pytest.raises(ConfigError, match=r"objects\.bucket: required"):
        load_settings(data)
    (data / "central.toml").write_text('[objects]\nbackend = "tape"\nbuckit = "x"\n')
    with pytest.raises(ConfigError, match=r"objects\.buckit: unknown key"):
        load_settings(data)
    (data / "central.toml").write_text(
        '[objects]\nbackend = "s3"\nbucket = "b"\nendpoint = "http://127.0.0.1:1"\n'
        'credentials_file = "s3.toml"\npart_size_bytes = 1024\n'
    )
    with pytest.raises(ConfigError, match=r"objects\.part_size_bytes"):
        load_settings(data)
    (data / "central.toml").write_text(
        '[objects]\nbackend = "s3"\nbucket = "b"\nendpoint = "http://127.0.0.1:1"\n'
        'credentials_file = "s3.toml"\n'
    )
    settings = load_settings(data)
    (data / "s3.toml").write_text('access_key_id = "AKIDEXAMPLE"\n')
    with pytest.raises(ConfigError, match="secret_access_key") as missing:
        create_app(settings)
    assert "AKIDEXAMPLE" not in str(missing.value)
    (data / "s3.toml").write_text('access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "s3cr3t"\n')
    from service.objects_s3 import S3Objects

    backend = S3Objects.from_settings(settings)
    creds = backend.client._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AKIDEXAMPLE", "s3cr3t")
    assert backend.writable() is False  # nothing listens on port 1: unhealthy, no exception


@pytest.mark.peer
def test_two_centrals_on_postgresql_share_only_the_database_and_the_bucket(
    postgres_server, s3: S3Server, tmp_path: Path  # noqa: F811
):
    url = _new_pg_database(postgres_server)
    bucket = s3.new_bucket()
    (tmp_path / "creds.toml").write_text(f'access_key_id = "{s3.access_key_id}"\n'
                                         f'secret_access_key = "{s3.secret_access_key}"\n')  # fmt: skip
    objects = s3_settings(s3, bucket, access_key_id="", secret_access_key="",
                          credentials_file=str(tmp_path / "creds.toml"))  # fmt: skip
    first = initialize(tmp_path / "a", db_url=url, admin_password="pw", objects=objects)
    second = tmp_path / "b"  # its own data dir: the config only, no objects, no SQLite
    second.mkdir()
    shutil.copy(first.settings.config_path, second / "central.toml")
    assert s3.secret_access_key not in first.settings.config_path.read_text()
    store = Store(first.settings.database_url)
    tokens = [store.mint_enrollment_token(600)[1] for _ in range(2)]
    reader = readers.mint_reader_token(store, "gateway")
    store.close()
    ports = [_free_port(), _free_port()]
    procs = [subprocess.Popen(central_run_command(d, p), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
             for d, p in zip((first.settings.data_dir, second), ports, strict=True)]  # fmt: skip
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for base, proc in zip(bases, procs, strict=True):
            _wait_healthy(base, proc)
        agents = [requests.post(f"{b}/api/v1/enroll", headers=bearer(t), timeout=10,
                                json={"host": f"h{i}", "os": "Linux", "version": "1"}).json()
                  for i, (b, t) in enumerate(zip(bases, tokens, strict=True))]  # fmt: skip
        blobs = [os.urandom(50_000), os.urandom(60_000)]
        shas = [hashlib.sha256(b).hexdigest() for b in blobs]
        for base, agent, blob, sha in zip(bases, agents, blobs, shas, strict=True):
            r = requests.put(f"{base}/api/v1/objects/{sha}", data=blob, timeout=30,
                             headers=bearer(agent["agent_token"]))  # fmt: skip
            assert r.status_code == 201, r.text
        # each process serves the object the other one stored, and knows it is there
        for base, blob, sha in zip(reversed(bases), blobs, shas, strict=True):
            got = requests.get(f"{base}/api/v1/reader/objects/{sha}", headers=bearer(reader),
                               timeout=30)  # fmt: skip
            assert got.status_code == 200 and got.content == blob
        again = requests.put(f"{bases[1]}/api/v1/objects/{shas[0]}", data=blobs[0], timeout=30,
                             headers=bearer(agents[1]["agent_token"]))  # fmt: skip
        assert again.status_code == 200 and again.json()["created"] is False
        assert [p for p in second.rglob("*") if p.is_file()] == [second / "central.toml"]
        assert not (second / "central.sqlite3").exists()
        listed = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == sorted(shas)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"central did not start: {err[-2000:]}")
        time.sleep(0.2)
