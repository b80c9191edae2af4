"""Gateway pieces without peers: config, multipart streaming, QIDO matching, ATNA syslog, CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cipher import keys
from gateway import audit, qido
from gateway.config import load_settings
from gateway.errors import ConfigError, UpstreamError
from gateway.multipart import MultipartReader, closing, iter_parts, part_bytes
from gateway.store import Store

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- config


def test_config_reports_every_bad_key(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(
        'identity_file = ""\nupstreams = ["ftp://x"]\ncache_bytes = -1\nbogus = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    assert err.value.problems == ["bogus: unknown key"]
    (tmp_path / "gateway.toml").write_text(
        'identity_file = ""\nupstreams = ["ftp://x"]\ncache_bytes = -1\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    assert {p.split(":")[0] for p in err.value.problems} == {
        "cache_bytes", "identity_file", "upstreams"}  # fmt: skip
    (tmp_path / "gateway.toml").write_text(
        'identity_file = "site.key"\nupstreams = ["http://pacs/dicom-web"]\n'
    )
    settings = load_settings(tmp_path, cache_bytes=1024)
    assert settings.upstreams == ("http://pacs/dicom-web",) and settings.cache_bytes == 1024
    with pytest.raises(ConfigError, match="identity_file: cannot read"):
        settings.read_identities()


# --------------------------------------------------------------------------- multipart


def _body(boundary: str, parts: list[bytes]) -> bytes:
    return b"preamble\r\n" + b"".join(
        part_bytes(boundary, "application/dicom", p) for p in parts
    ) + closing(boundary)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_multipart_parts_survive_any_chunking(chunk: int) -> None:
    boundary = "b0und"
    # bodies that contain CRLFs, dashes and almost-boundaries
    parts = [b"\r\n--b0un\r\n" * 3, b"", bytes(range(256)) * 40, b"x\r\n--b0undary-ish"]
    body = _body(boundary, parts)
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    got = list(iter_parts(chunks, boundary, max_part=1 << 20))
    assert [p.body for p in got] == parts
    assert got[0].headers["content-type"] == "application/dicom"


def test_multipart_part_headers_read_after_a_megabyte_part() -> None:
    # the reader drops what it read once it holds over 1 MiB; a part's headers that
    # arrive after that (split across two reads) must still be read where they are
    boundary = "b0und"
    parts = [bytes(range(256)) * 6000, b"second", b"third" * 1000]
    body = _body(boundary, parts)
    for chunk in range(1000, 1040):  # some of these split the second part's headers
        chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        assert [p.body for p in iter_parts(chunks, boundary, 4 << 20)] == parts, chunk
        assert _read_all(body, boundary, chunk, max_part=4 << 20) == parts, chunk


def test_multipart_truncated_or_oversized_is_an_upstream_error() -> None:
    body = _body("xx", [b"a" * 100, b"b" * 100])
    with pytest.raises(UpstreamError, match="closing boundary"):
        list(iter_parts([body[:-10]], "xx", 1 << 20))
    with pytest.raises(UpstreamError, match="larger"):
        list(iter_parts([body], "xx", 10))


class _Trickle:
    """A buffered body over bytes whose lines come at most ``step`` bytes at a time (as
    a socket's may); ``read(n)`` gives ``n`` bytes but at the end."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step
        self.reads: list[int] = []  # what read() was asked for

    def read(self, n: int) -> bytes:
        self.reads.append(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def readline(self, limit: int) -> bytes:
        end = self.data.find(b"\n", self.pos) + 1 or len(self.data)
        out = self.data[self.pos : min(end, self.pos + limit, self.pos + self.step)]
        self.pos += len(out)
        return out


def _read_all(body: bytes, boundary: str, step: int, max_part: int = 1 << 20,
              reads: list[int] | None = None) -> list[bytes]:  # fmt: skip
    source = _Trickle(body, step)
    reader = MultipartReader([], boundary, max_part, source)
    out = []
    while reader.next_part():
        out.append(reader.read(4 << 20))
        assert reader.read(10) == b""
    if reads is not None:
        reads.extend(source.reads)
    return out


@pytest.mark.parametrize("step", [3, 1000, 1 << 20])
def test_multipart_read_into_place_by_content_length_and_wrong_lengths_fall_back(
    step: int,
) -> None:
    boundary = "b0und"
    parts = [b"\r\n--b0un\r\n" * 3, b"", bytes(range(256)) * 600, b"x\r\n--b0undary-ish"]
    body = _body(boundary, parts)
    reads: list[int] = []
    assert _read_all(body, boundary, step, reads=reads) == parts
    assert 153600 in reads  # the sized part came whole from one read, not by scanning
    assert _read_all(body[len(b"preamble\r\n"):], boundary, step) == parts
    # a Content-Length that lies (too long, too short, past the end): the delimiter decides
    for lie in (b"Content-Length: 153600", b"Content-Length: 99999999", b"Content-Length: 1"):
        bad = body.replace(b"Content-Length: 153600", lie.replace(b"153600", b"153601"), 1)
        assert _read_all(bad, boundary, step, max_part=1 << 30) == parts
    plain = body.replace(b"Content-Length: ", b"X-Length: ")  # no lengths: scanned
    reads = []
    assert _read_all(plain, boundary, step, reads=reads) == parts
    assert reads == []
    with pytest.raises(UpstreamError, match="closing boundary"):
        _read_all(body[:-10], boundary, step)
    with pytest.raises(UpstreamError, match="closing boundary"):
        _read_all(body[: len(body) // 2], boundary, step)
    with pytest.raises(UpstreamError, match="larger"):
        _read_all(body, boundary, step, max_part=1000)


# --------------------------------------------------------------------------- QIDO


def _row(pid: str, name: str, date: str, modality: str, study: str, series: str,
         sop: str) -> qido.Row:  # fmt: skip
    return {
        "00100020": {"vr": "LO", "Value": [pid]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
        "00080020": {"vr": "DA", "Value": [date]},
        "00080060": {"vr": "CS", "Value": [modality]},
        "0020000D": {"vr": "UI", "Value": [study]},
        "0020000E": {"vr": "UI", "Value": [series]},
        "00080018": {"vr": "UI", "Value": [sop]},
    }


ROWS = [
    _row("P1", "DOE^JANE", "20240315", "CT", "1.1", "1.1.1", "1.1.1.1"),
    _row("P1", "DOE^JANE", "20240315", "SR", "1.1", "1.1.2", "1.1.2.1"),
    _row("P2", "DOERING^MAX", "20230101", "MR", "1.2", "1.2.1", "1.2.1.1"),
    _row("P3", "SMITH^JOHN", "20220101", "CT", "1.3", "1.3.1", "1.3.1.1"),
]


def _studies(**params: str) -> list[str]:
    q = qido.parse_query(qido.STUDY, params.items())
    return [r["0020000D"]["Value"][0] for r in qido.search(ROWS, q, "http://gw/dicom-web")]


def test_qido_matching_rules() -> None:
    assert _studies(PatientName="doe*") == ["1.1", "1.2"]  # PN: case-insensitive wildcard
    assert _studies(PatientName="DOE^JANE") == ["1.1"]
    assert _studies(PatientName="JANE", fuzzymatching="true") == ["1.1"]
    assert _studies(PatientName="JANE") == []
    assert _studies(PatientID="P?") == ["1.1", "1.2", "1.3"]
    assert _studies(PatientID="p1") == []  # LO: case-sensitive
    assert _studies(StudyDate="20230101-20241231") == ["1.1", "1.2"]
    assert _studies(StudyDate="-20221231") == ["1.3"]
    assert _studies(StudyDate="20240315") == ["1.1"]
    assert _studies(ModalitiesInStudy="SR") == ["1.1"]
    assert _studies(ModalitiesInStudy="MR\\SR") == ["1.1", "1.2"]
    assert _studies(StudyInstanceUID="1.2,1.3") == ["1.2", "1.3"]
    assert _studies(**{"00100020": "P3"}) == ["1.3"]
    assert _studies(limit="1", offset="1") == ["1.2"]
    q = qido.parse_query(qido.STUDY, [("PatientID", "P1")])
    result = qido.search(ROWS, q, "http://gw/dicom-web")[0]
    assert result["00080061"]["Value"] == ["CT", "SR"]
    assert result["00201206"]["Value"] == [2] and result["00201208"]["Value"] == [2]
    assert result["00081190"]["Value"] == ["http://gw/dicom-web/studies/1.1"]
    with pytest.raises(qido.QueryError, match="unknown attribute"):
        qido.parse_query(qido.STUDY, [("NoSuchKeyword", "x")])
    with pytest.raises(qido.QueryError, match="limit"):
        qido.parse_query(qido.STUDY, [("limit", "-1")])


# --------------------------------------------------------------------------- syslog


def test_audit_entries_go_to_syslog_as_rfc5424_atna_messages(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    store = Store(f"sqlite:///{tmp_path / 'gw.sqlite3'}")
    store.create_schema()
    sender = audit.SyslogSender(f"127.0.0.1:{sock.getsockname()[1]}")
    store.on_audit = sender.send
    store.append_audit([audit.AuditEvent("rita", "10.0.0.9", "retrieve", "refused", "1.2.3",
                                         "1.2.3.4", "1.2.3.4.5", "tampered")])  # fmt: skip
    message = sock.recv(65536).decode("utf-8")
    sender.close()
    sock.close()
    store.close()
    assert message.startswith("<85>1 ")
    assert 'csd-code="110103"' in message  # DICOM Instances Accessed
    assert 'EventOutcomeIndicator="8"' in message  # serious failure: a refused instance
    assert 'UserID="rita"' in message and 'ParticipantObjectID="1.2.3"' in message


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scanfort", "gateway", *args],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})  # fmt: skip


def test_cli_init_user_token_and_audit(tmp_path: Path) -> None:
    identity, _ = keys.generate_identity()
    key = tmp_path / "site.key"
    key.write_text(identity + "\n")
    data_dir = tmp_path / "gw"
    common = ["--data-dir", str(data_dir)]
    init = _cli("init", *common, "--identity", str(key), "--upstream", "http://127.0.0.1:1/dw")
    assert init.returncode == 0, init.stderr
    assert "password:" in init.stdout  # generated, shown once
    assert identity not in init.stdout + init.stderr
    text = (data_dir / "gateway.toml").read_text()
    assert f'identity_file = "{key}"' in text and identity not in text
    again = _cli("init", *common, "--identity", str(key), "--upstream", "http://x/dw")
    assert again.returncode == 1 and "already initialized" in again.stderr
    user = _cli("user", *common, "rita", "--role", "reader", env={"SCANFORT_GATEWAY_PASSWORD": "p"})
    assert user.returncode == 0 and "rita: reader" in user.stdout
    token = _cli("token", *common, "rita")
    assert token.returncode == 0 and token.stdout.startswith("sfg_")
    assert _cli("token", *common, "nobody").returncode == 1
    verify = _cli("audit", "verify", *common)
    assert verify.returncode == 0 and "verified: 0 entries" in verify.stdout
    bad_viewer = _cli("run", *common, "--viewer", str(tmp_path))
    assert bad_viewer.returncode == 2 and "index.html" in bad_viewer.stderr
    missing = _cli("run", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "gateway init" in missing.stderr


def test_cors_only_for_listed_origins_and_csp_on_every_page(tmp_path: Path) -> None:
    import requests

    from gateway.config import Settings
    from gateway.server import BackgroundServer

    identity, _ = keys.generate_identity()
    settings = Settings(data_dir=tmp_path, identity_file="unused",
                        upstreams=("http://127.0.0.1:9/dicom-web",),
                        cors_origins=("https://viewer.example",))  # fmt: skip
    with BackgroundServer(settings, identities=[identity]) as gw:
        pre = {"Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization"}  # fmt: skip
        ok = requests.options(gw.url + "/dicom-web/studies", timeout=10,
                              headers={"Origin": "https://viewer.example", **pre})  # fmt: skip
        assert ok.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        assert ok.headers["Access-Control-Allow-Credentials"] == "true"
        other = requests.options(gw.url + "/dicom-web/studies", timeout=10,
                                 headers={"Origin": "https://evil.example", **pre})  # fmt: skip
        assert "Access-Control-Allow-Origin" not in other.headers
        login = requests.get(gw.url + "/login", timeout=10)
        assert "script-src 'self';" in login.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in login.headers["Content-Security-Policy"]
        assert login.headers["X-Content-Type-Options"] == "nosniff"
        denied = requests.get(gw.url + "/dicom-web/studies", timeout=10)
        assert denied.status_code == 401 and "Content-Security-Policy" in denied.headers
        no_viewer = requests.get(gw.url + "/viewer", timeout=10, allow_redirects=False)
        assert no_viewer.status_code == 404


def test_run_logs_no_query_strings_and_login_redirects_stay_on_site(tmp_path: Path) -> None:
    import requests

    from gateway.pages import _safe_next
    from tests import peers

    assert [_safe_next(v) for v in ("/viewer?x=1", "//evil.example", "/\\evil.example",
                                    "https://evil.example", "/a\nb")] == [
        "/viewer?x=1", "/", "/", "/", "/"]  # fmt: skip
    identity, _ = keys.generate_identity()
    key = tmp_path / "site.key"
    key.write_text(identity + "\n")
    env = {"SCANFORT_GATEWAY_PASSWORD": "pw-1"}
    data_dir = str(tmp_path / "gw")
    assert _cli("init", "--data-dir", data_dir, "--identity", str(key), "--upstream",
                f"http://127.0.0.1:{peers.free_port()}/dicom-web", env=env).returncode == 0
    port = peers.free_port()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scanfort", "gateway", "run", "--data-dir", data_dir,
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    try:
        peers.wait_for_port(port, proc)
        r = requests.get(f"http://127.0.0.1:{port}/dicom-web/studies",
                         params={"PatientID": "SECRET-PID-42", "PatientName": "SECRET^NAME"},
                         auth=("admin", "pw-1"), timeout=10)  # fmt: skip
        assert r.status_code == 502  # the upstream is down; the request was handled
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert "gateway on http://127.0.0.1" in text
    assert "SECRET" not in text


def test_run_with_a_certificate_serves_https_secure_cookies_and_hsts(tmp_path: Path) -> None:
    import requests

    from tests import peers
    from tests.test_service_cli import _self_signed

    identity, _ = keys.generate_identity()
    key = tmp_path / "site.key"
    key.write_text(identity + "\n")
    data_dir = str(tmp_path / "gw")
    assert _cli("init", "--data-dir", data_dir, "--identity", str(key), "--upstream",
                "http://127.0.0.1:9/dicom-web", env={"SCANFORT_GATEWAY_PASSWORD": "pw-1"}
                ).returncode == 0  # fmt: skip
    cert, tls_key = _self_signed(tmp_path)
    port = peers.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanfort", "gateway", "run", "--data-dir", data_dir, "--port",
         str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(tls_key),
         "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        peers.wait_for_port(port, proc)
        url = f"https://127.0.0.1:{port}"
        login = requests.post(url + "/login", data={"username": "admin", "password": "pw-1"},
                              verify=str(cert), allow_redirects=False, timeout=10)  # fmt: skip
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        assert login.headers["strict-transport-security"] == "max-age=31536000"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/healthz", timeout=5)  # not trusted without the certificate
    finally:
        proc.terminate()
        proc.wait(10)
