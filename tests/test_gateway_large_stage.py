"""The stage cache: a large instance's ciphertext is fetched once and proven once.

A stdlib DICOMweb stand-in (counting what it is asked for) serves protected multi-frames;
the gateway's ``stream_above_bytes`` is low so they take the large-instance path. Repeated
frame, rendered, metadata and bulk data requests must not go to the archive again, must
give the original's bytes, and must each be audited; the staged file holds ciphertext
only; a staged value changed on disk after it was verified is refused, not deciphered.
The cache itself (LRU, cap, reference counts, one fetch for requests arriving together,
a clean directory at start) is driven directly with real protected instances.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
import requests

from cipher import keys
from gateway import dicomdata, largeframes
from gateway.config import Settings
from gateway.restore import Restorer, Streamed
from gateway.server import BackgroundServer
from gateway.stagecache import Stage, StageCache
from tests import gateway_data as data


class Archive(ThreadingHTTPServer):
    instances: list[tuple[str, bytes]]  # (SOP Instance UID, stored bytes)
    asked: Counter[str]  # GETs of one instance, by SOP Instance UID
    slow: threading.Event  # set: an instance retrieve waits a moment before answering


class Handler(BaseHTTPRequestHandler):
    server: Archive
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if "json" in self.headers.get("Accept", ""):  # searches: an archive that lists nothing
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")
            return
        wanted = [(sop, raw) for sop, raw in self.server.instances
                  if "/instances/" not in self.path or self.path.endswith("/" + sop)]  # fmt: skip
        if "/instances/" in self.path:
            self.server.asked.update(sop for sop, _ in wanted)
            if self.server.slow.is_set():
                threading.Event().wait(0.5)  # other requests arrive meanwhile
        boundary = "stage-b0undary"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                        + raw + b"\r\n" for _, raw in wanted) + f"--{boundary}--\r\n".encode()
        self.send_response(200 if wanted else 404)
        self.send_header("Content-Type",
                         f'multipart/related; type="application/dicom"; boundary={boundary}')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive() -> Iterator[Archive]:
    server = Archive(("127.0.0.1", 0), Handler)
    server.instances, server.asked, server.slow = [], Counter(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _enciphered_value(protected: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(protected)).PixelData)


def _staged_fds(stage_dir: Path) -> list[int]:
    """This process's open descriptors of files under ``stage_dir`` (unlinked ones)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(stage_dir) + "/"):
            found.append(int(name))
    return found


def test_a_large_instance_is_fetched_once_for_frames_rendered_metadata_and_bulkdata(
    archive: Archive, tmp_path: Path
) -> None:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-S", "STAGE^STELLA", "ACC-S", "20240710")
    original = data.multiframe(patient, 30, rows=64, cols=48)
    protected = data.protect(original, recipient)
    archive.instances = [(data.uids(protected)[2], protected)]
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    stage_dir = tmp_path / "staged"
    stage_dir.mkdir()
    (stage_dir / "scanfort-stage-left-by-a-crash").write_bytes(b"old")
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=32 * 1024, stage_dir=str(stage_dir))  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(original))
    pixels = ds.pixel_array
    study, series, sop = data.uids(protected)
    with BackgroundServer(settings, identities=[identity]) as gw:
        state = gw.app.state.gateway
        assert list(stage_dir.iterdir()) == []  # emptied at start
        state.store.set_user("rita", "pw", ["reader"])
        auth = ("rita", "pw")
        root = f"{gw.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"

        for numbers in ([7, 1, 30, 7], [12], [30, 2]):  # first: the whole verified pass
            got = requests.get(f"{root}/frames/{','.join(map(str, numbers))}", auth=auth,
                               timeout=60)  # fmt: skip
            assert got.status_code == 200, got.text
            assert data.bodies(got) == [pixels[n - 1].tobytes() for n in numbers]
        stage = state.stages._items[sop]
        assert stage.verified and stage.refs == 0
        png = requests.get(f"{root}/frames/5/rendered", auth=auth, timeout=60,
                           params={"window": "500,1000"}, headers={"Accept": "image/png"})
        assert png.status_code == 200
        assert png.content == dicomdata.render(ds, 5, window=(500.0, 1000.0), fmt="png")

        meta = requests.get(f"{root}/metadata", auth=auth, timeout=60)
        assert meta.status_code == 200
        assert meta.json() == [dicomdata.metadata_json(ds, root)]  # what a whole restore gives

        bulk = requests.get(meta.json()[0]["7FE00010"]["BulkDataURI"], auth=auth, timeout=60,
                            headers={"Accept": "application/octet-stream"})  # fmt: skip
        assert bulk.status_code == 200 and bulk.content == bytes(ds.PixelData)
        multi = requests.get(f"{root}/bulkdata/7FE00010", auth=auth, timeout=60)
        assert data.bodies(multi) == [bytes(ds.PixelData)]
        assert requests.get(f"{root}/bulkdata/00091001", auth=auth,
                            timeout=60).status_code == 404  # fmt: skip

        assert archive.asked[sop] == 1  # one fetch for all of that
        assert state.restorer.cache.size == 0  # nothing decrypted is kept
        served = [(e.operation, e.outcome) for e in state.store.iter_audit()
                  if e.instance_uid == sop]  # fmt: skip
        assert Counter(served) == Counter({("frames", "ok"): 3, ("rendered", "ok"): 1,
                                           ("metadata", "ok"): 1, ("bulkdata", "ok"): 3})

        # on disk: one unlinked file under stage_dir, holding the ciphertext only
        assert list(stage_dir.iterdir()) == []
        fds = _staged_fds(stage_dir)
        assert len(fds) == 1
        with open(f"/proc/self/fd/{fds[0]}", "r+b") as staged:
            assert staged.read() == _enciphered_value(protected)
            # the disk changes one byte of frame 3 after the verified pass
            at = 2 * 64 * 48 * 2 + 100
            staged.seek(at)
            byte = staged.read(1)
            staged.seek(at)
            staged.write(bytes([byte[0] ^ 1]))
        refused = requests.get(f"{root}/frames/3", auth=auth, timeout=60)
        assert refused.status_code == 409  # refused, never the noise it would decipher to
        outcomes = [(e.operation, e.outcome) for e in state.store.iter_audit()
                    if e.instance_uid == sop]  # fmt: skip
        assert outcomes[-1] == ("frames", "refused")
        again = requests.get(f"{root}/frames/3", auth=auth, timeout=60,
                             headers={"Accept": "application/octet-stream"})  # fmt: skip
        assert again.status_code == 200 and again.content == pixels[2].tobytes()
        assert archive.asked[sop] == 2  # the damaged entry was dropped, fetched anew

        # an admin's cache clear drops the staged ciphertext and its opened blob too
        state.store.set_user("ada", "pw", ["admin"])
        cleared = requests.post(f"{gw.url}/admin/cache/clear", auth=("ada", "pw"), timeout=60)
        assert cleared.status_code == 200, cleared.text
        assert cleared.json()["dropped_staged_bytes"] == len(_enciphered_value(protected))
        assert sop not in state.stages._items and state.stages.size == 0
        assert _staged_fds(stage_dir) == []
        after = requests.get(f"{root}/frames/4", auth=auth, timeout=60,
                             headers={"Accept": "application/octet-stream"})  # fmt: skip
        assert after.status_code == 200 and after.content == pixels[3].tobytes()
        assert archive.asked[sop] == 3  # fetched anew after the clear


def _staged_one(restorer: Restorer, cache: StageCache, stage: Stage, raw: bytes) -> Streamed:
    taken = restorer.take(io.BytesIO(raw), cache.spool(stage))
    assert isinstance(taken, Streamed)
    return taken


@pytest.fixture
def instances() -> tuple[str, list[bytes]]:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-C", "CACHE^CARL", "ACC-C", "20240711")
    return identity, [data.protect(data.multiframe(patient, 20, rows=64, cols=48), recipient)
                      for _ in range(3)]  # fmt: skip


def test_the_cache_evicts_the_least_recently_used_entry_nobody_holds(
    tmp_path: Path, instances: tuple[str, list[bytes]]
) -> None:
    identity, raws = instances
    size = len(_enciphered_value(raws[0]))  # 120 KiB each
    cache = StageCache(tmp_path / "stage", cap=2 * size + size // 2)
    restorer = Restorer([identity], 1 << 20, 2, stream_above=16 * 1024)
    fetched: list[int] = []

    def fetcher(i: int) -> largeframes.Fetch:
        def fetch(spool: object) -> Streamed:
            fetched.append(i)
            assert spool is not None
            return restorer.take(io.BytesIO(raws[i]), spool)  # type: ignore[return-value,arg-type]
        return fetch

    held = largeframes.held(cache, "a", fetcher(0))
    first, _ = held.__enter__()  # held by a request while the others come and go
    assert isinstance(first, Stage)
    for i, key in ((1, "b"), (2, "c"), (1, "b")):
        with largeframes.held(cache, key, fetcher(i)) as (item, _):
            assert isinstance(item, Stage)
            picked = largeframes.from_stage(cache, item, [2])
            assert picked.frames[0] == pydicom.dcmread(io.BytesIO(
                cipher_original(identity, raws[i]))).pixel_array[1].tobytes()
    # "c" needed room: "a" is held, so "b" (the least recently used free one) went
    assert fetched == [0, 1, 2, 1]
    assert cache.size <= cache.cap
    picked = largeframes.from_stage(cache, first, [20])  # the held one is still readable
    assert picked.frames[0] == pydicom.dcmread(io.BytesIO(
        cipher_original(identity, raws[0]))).pixel_array[19].tobytes()
    held.__exit__(None, None, None)
    assert first.refs == 0 and not first.gone
    cache.clear()
    assert cache.size == 0 and first.gone and first.file is None


def cipher_original(identity: str, protected: bytes) -> bytes:
    import cipher

    out = io.BytesIO()
    cipher.unprotect(io.BytesIO(protected), out, [identity])
    return out.getvalue()


def test_requests_arriving_together_fetch_the_instance_once(
    tmp_path: Path, instances: tuple[str, list[bytes]]
) -> None:
    identity, raws = instances
    cache = StageCache(tmp_path / "stage", cap=1 << 30)
    restorer = Restorer([identity], 1 << 20, 2, stream_above=16 * 1024)
    fetching, go = threading.Event(), threading.Event()
    calls: list[object] = []

    def fetch(spool: object) -> Streamed:
        calls.append(spool)
        fetching.set()
        go.wait(30)  # the archive is slow: the second request arrives meanwhile
        assert spool is not None
        return restorer.take(io.BytesIO(raws[0]), spool)  # type: ignore[return-value,arg-type]

    results: dict[str, bytes] = {}

    def request(name: str, frame: int) -> None:
        with largeframes.held(cache, "same", fetch) as (item, _):
            assert isinstance(item, Stage)
            results[name] = largeframes.from_stage(cache, item, [frame]).frames[0]

    first = threading.Thread(target=request, args=("first", 3))
    first.start()
    assert fetching.wait(30)
    second = threading.Thread(target=request, args=("second", 9))
    second.start()
    for _ in range(3000):  # until the second holds the pending entry (at most 30 s)
        if cache._items["same"].refs >= 2:
            break
        threading.Event().wait(0.01)
    go.set()
    assert cache._items["same"].refs == 2
    first.join(30)
    second.join(30)
    assert len(calls) == 1  # one fetch
    pixels = pydicom.dcmread(io.BytesIO(cipher_original(identity, raws[0]))).pixel_array
    assert results == {"first": pixels[2].tobytes(), "second": pixels[8].tobytes()}
    stage = cache._items["same"]
    assert stage.verified and stage.refs == 0
    assert stage.file is not None
    assert hashlib.sha256(stage.file.pread(0, stage.file.written)).digest() == hashlib.sha256(
        _enciphered_value(raws[0])).digest()


def test_stage_settings_are_validated_and_default_under_the_data_dir(tmp_path: Path) -> None:
    from gateway.config import load_settings
    from gateway.errors import ConfigError

    base = {"identity_file": "site.key", "upstreams": ("http://pacs/dicom-web",)}
    assert load_settings(tmp_path, **base).stage_path == tmp_path.resolve() / "stage"
    assert load_settings(tmp_path, stage_dir="elsewhere", **base).stage_path == (
        tmp_path.resolve() / "elsewhere")
    assert load_settings(tmp_path, stage_dir=str(tmp_path / "abs"), **base).stage_path == (
        tmp_path / "abs")
    with pytest.raises(ConfigError) as bad:
        load_settings(tmp_path, stage_cache_bytes=-1, **base)
    assert "stage_cache_bytes: must be an integer >= 0" in str(bad.value)


def test_series_metadata_not_in_the_index_takes_a_large_instance_from_its_header(
    archive: Archive, tmp_path: Path
) -> None:
    """The archive lists nothing (the index cannot hold the series), so series metadata is
    read from the archive's retrieve: the large instance's attributes come from the header
    in its blob (not restored whole, nothing cached), the small one's as before."""
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-M", "META^MIRA", "ACC-M", "20240712")
    large = data.multiframe(patient, 30, rows=64, cols=48)
    small = data.ct_series(patient, 1, rows=32, cols=32)[0]
    archive.instances = [(data.uids(raw)[2], data.protect(raw, recipient))
                         for raw in (large, small)]  # fmt: skip
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=32 * 1024)  # fmt: skip
    study, series, _ = data.uids(large)
    with BackgroundServer(settings, identities=[identity]) as gw:
        state = gw.app.state.gateway
        state.store.set_user("rita", "pw", ["reader"])
        got = requests.get(f"{gw.url}/dicom-web/studies/{study}/series/{series}/metadata",
                           auth=("rita", "pw"), timeout=60)  # fmt: skip
        assert got.status_code == 200, got.text
        expected = []
        for raw in (large, small):
            st, se, sop = data.uids(raw)
            expected.append(dicomdata.metadata_json(pydicom.dcmread(io.BytesIO(raw)),
                            f"{gw.url}/dicom-web/studies/{st}/series/{se}/instances/{sop}"))
        assert got.json() == expected
        assert state.restorer.cache.size == len(cipher_original(identity, archive.instances[1][1]))
        outcomes = [(e.operation, e.outcome, e.instance_uid) for e in state.store.iter_audit()
                    if e.operation == "metadata"]  # fmt: skip
        assert outcomes == [("metadata", "ok", data.uids(raw)[2]) for raw in (large, small)]


def test_frame_requests_arriving_together_make_one_archive_request(
    archive: Archive, tmp_path: Path
) -> None:
    """Four frame requests for an instance nobody asked for yet, while the archive is slow
    to answer: one of them fetches it, the others wait for that fetch; all four get their
    frame and their audit entry."""
    from concurrent.futures import ThreadPoolExecutor

    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-T", "TOGETHER^TEA", "ACC-T", "20240714")
    original = data.multiframe(patient, 12, rows=64, cols=48)
    protected = data.protect(original, recipient)
    archive.instances = [(data.uids(protected)[2], protected)]
    archive.slow.set()
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=32 * 1024)  # fmt: skip
    pixels = pydicom.dcmread(io.BytesIO(original)).pixel_array
    study, series, sop = data.uids(protected)
    with BackgroundServer(settings, identities=[identity]) as gw:
        state = gw.app.state.gateway
        state.store.set_user("rita", "pw", ["reader"])
        root = f"{gw.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"

        def frame(n: int) -> bytes:
            got = requests.get(f"{root}/frames/{n}", auth=("rita", "pw"), timeout=60,
                               headers={"Accept": "application/octet-stream"})  # fmt: skip
            assert got.status_code == 200, got.text
            return got.content

        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(frame, [1, 5, 9, 12]))
        assert bodies == [pixels[n - 1].tobytes() for n in (1, 5, 9, 12)]
        assert archive.asked[sop] == 1
        outcomes = [(e.operation, e.outcome) for e in state.store.iter_audit()
                    if e.instance_uid == sop]  # fmt: skip
        assert outcomes == [("frames", "ok")] * 4


@contextmanager
def _large_instance_behind_a_gateway(archive: Archive, tmp_path: Path,
                                     raw: bytes) -> Iterator[tuple[BackgroundServer, str]]:
    """``raw`` protected in the archive, a gateway in front taking anything above 1 KiB
    as large, reader ``rita``/``pw``; yields the gateway and the instance's WADO-RS URL."""
    identity, recipient = keys.generate_identity()
    protected = data.protect(raw, recipient)
    archive.instances = [(data.uids(protected)[2], protected)]
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=1024)  # fmt: skip
    study, series, sop = data.uids(raw)
    with BackgroundServer(settings, identities=[identity]) as gw:
        gw.app.state.gateway.store.set_user("rita", "pw", ["reader"])
        yield gw, f"{gw.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"


@pytest.mark.parametrize("name", ["image_dfl.dcm", "JPEG2000.dcm"])
def test_deflated_and_encapsulated_large_instances_are_fetched_once_too(
    archive: Archive, tmp_path: Path, name: str
) -> None:
    """No unit per frame (deflated; compressed fragments): every request runs the whole
    pass from the staged value (the original's SHA-256 checked each time), but the
    archive is asked once."""
    raw = data.pydicom_file(name, data.Patient("PAT-Z", "ZIP^ZOE", "ACC-Z", "20240715"))
    ds = pydicom.dcmread(io.BytesIO(raw))
    sop = data.uids(raw)[2]
    with _large_instance_behind_a_gateway(archive, tmp_path, raw) as (gw, root):
        state = gw.app.state.gateway
        auth, one = ("rita", "pw"), {"Accept": "application/octet-stream"}
        for _ in range(2):
            got = requests.get(f"{root}/frames/1", auth=auth, timeout=60, headers=one)
            assert got.status_code == 200, got.text
            assert got.content == dicomdata.frames(ds, [1])[0]
        meta = requests.get(f"{root}/metadata", auth=auth, timeout=60).json()[0]
        expected = dicomdata.metadata_json(ds, root)
        # a large instance's Pixel Data is always a BulkDataURI (these are small: inline)
        assert meta.pop("7FE00010")["BulkDataURI"] == f"{root}/bulkdata/7FE00010"
        expected.pop("7FE00010")
        assert meta == expected
        bulk = requests.get(f"{root}/bulkdata/7FE00010", auth=auth, timeout=60, headers=one)
        assert bulk.status_code == 200 and bulk.content == bytes(ds.PixelData)
        assert archive.asked[sop] == 1
        assert state.stages._items[sop].verified


def _with_elements_after_pixels(raw: bytes) -> bytes:
    """``raw`` with what some modalities store after Pixel Data: a private block in group
    7FE1 (as vendors' CSA headers are) and Data Set Trailing Padding."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    block = ds.private_block(0x7FE1, "SCANFORT TEST AFTER", create=True)
    block.add_new(0x01, "LO", "after the pixels")
    block.add_new(0x02, "OB", bytes(range(40)))
    ds.DataSetTrailingPadding = b"\x00" * 16
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name", ["native", "JPEG2000.dcm"])
def test_a_large_instance_keeps_the_elements_stored_after_its_pixel_data(
    archive: Archive, tmp_path: Path, name: str
) -> None:
    """Metadata and bulk data of a large instance come from the blob, not a whole restore:
    the attributes stored after Pixel Data (after an encapsulated value's Sequence
    Delimitation Item too) are there as a whole restore gives them."""
    patient = data.Patient("PAT-T", "TAIL^TOM", "ACC-T", "20240716")
    raw = (data.multiframe(patient, 12, rows=64, cols=48) if name == "native"
           else data.pydicom_file(name, patient))  # fmt: skip
    raw = _with_elements_after_pixels(raw)
    ds = pydicom.dcmread(io.BytesIO(raw))
    sop = data.uids(raw)[2]
    with _large_instance_behind_a_gateway(archive, tmp_path, raw) as (_, root):
        auth = ("rita", "pw")
        meta = requests.get(f"{root}/metadata", auth=auth, timeout=60)
        assert meta.status_code == 200, meta.text
        got = meta.json()[0]
        expected = dicomdata.metadata_json(ds, root)
        for tag in ("7FE10010", "7FE11001", "7FE11002", "FFFCFFFC"):
            assert tag in got, tag
        got.pop("7FE00010")
        expected.pop("7FE00010")
        assert got == expected
        for tag, value in (("7FE11002", bytes(range(40))), ("FFFCFFFC", b"\x00" * 16)):
            bulk = requests.get(f"{root}/bulkdata/{tag}", auth=auth, timeout=60,
                                headers={"Accept": "application/octet-stream"})  # fmt: skip
            assert bulk.status_code == 200 and bulk.content == value, tag
        assert archive.asked[sop] == 1
