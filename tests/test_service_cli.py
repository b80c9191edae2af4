"""``scanfort central init | token | run | revoke`` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from cipher.pseudonym import PseudonymSecret
from scanfort.cli import main
from tests.peers import central_run_command

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_init_prints_credentials_once_and_refuses_to_overwrite(tmp_path, capsys):
    data = tmp_path / "central"
    assert (
        main(["central", "init", "--data-dir", str(data), "--recipient", "age1abc", "--json"]) == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["admin_user"] == "admin" and len(info["admin_password"]) >= 16
    assert info["enrollment_token"].startswith("sfe_")
    config = (data / "central.toml").read_text()
    assert 'recipients = ["age1abc"]' in config
    assert info["admin_password"] not in config and info["enrollment_token"] not in config
    # The site's pseudonymisation secret: 0600, in the cipher's text form, never printed.
    secret_file = data / "pseudonym.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = PseudonymSecret.parse(secret_file.read_text())
    assert secret.version == 1
    assert secret_file.read_text().split()[-1] not in json.dumps(info)

    assert main(["central", "init", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scanfort: error: already initialized")
    assert "scanfort: hint: mint more enrollment tokens with `scanfort central token`" in err

    assert main(["central", "token", "--data-dir", str(data), "--note", "MR 1"]) == 0
    assert capsys.readouterr().out.strip().startswith("sfe_")


def test_admin_password_from_the_environment_is_not_echoed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCANFORT_ADMIN_PASSWORD", "from-env-secret")
    assert main(["central", "init", "--data-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "from-env-secret" not in out and "admin password" not in out


def test_run_without_init_explains_what_to_do(tmp_path, capsys):
    assert main(["central", "run", "--data-dir", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "scanfort: error: central not initialized" in err
    assert "scanfort: hint: run `scanfort central init` first" in err


def test_run_serves_until_terminated_and_revoke_locks_an_agent_out(tmp_path: Path, capsys):
    data = tmp_path / "central"
    assert main(["central", "init", "--data-dir", str(data), "--json"]) == 0
    token = json.loads(capsys.readouterr().out)["enrollment_token"]
    port = _free_port()
    proc = subprocess.Popen(
        central_run_command(data, port),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "central did not come up"
            time.sleep(0.2)
        r = requests.post(
            f"{url}/api/v1/enroll",
            json={"host": "h", "os": "Linux", "version": "1"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert r.status_code == 200
        agent = r.json()
        hb = {
            "agent_id": agent["agent_id"],
            "version": "1",
            "host": "h",
            "os": "Linux",
            "uptime_s": 1,
            "sent_at": time.time(),
        }
        auth = {"Authorization": f"Bearer {agent['agent_token']}"}
        assert (
            requests.post(f"{url}/api/v1/heartbeat", json=hb, headers=auth, timeout=5).status_code
            == 200
        )
        assert main(["central", "revoke", "--data-dir", str(data), agent["agent_id"]]) == 0
        assert (
            requests.post(f"{url}/api/v1/heartbeat", json=hb, headers=auth, timeout=5).status_code
            == 401
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    # uvicorn shuts down gracefully, then re-raises SIGTERM (the conventional exit for it)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert b"Traceback" not in err


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanfort-central-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_run_serves_https_with_secure_cookies(tmp_path: Path, capsys):
    data = tmp_path / "central"
    assert main(["central", "init", "--data-dir", str(data), "--json"]) == 0
    capsys.readouterr()
    cert, key = _self_signed(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        central_run_command(data, port, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1, verify=str(cert)).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "central did not start"
            time.sleep(0.2)
        login = requests.get(f"{url}/login", timeout=5, verify=str(cert))
        assert "secure" in login.headers["set-cookie"].lower()
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/healthz", timeout=5)  # not trusted without the certificate
    finally:
        proc.terminate()
        proc.wait(15)
