"""Config validation and the ``scanfort agent`` commands."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import tomllib

from agent.config import load_config, parse_config, parse_size
from agent.errors import ConfigError
from cipher import keys
from scanfort.cli import main
from tests.helpers import TOKEN, Receiver, drop, running, wait_until, write_config


@pytest.fixture(scope="module")
def recipient() -> str:
    return keys.generate_identity()[1]


def test_sizes() -> None:
    assert parse_size("2 GiB") == 2 * 1024**3
    assert parse_size("500MB") == 500_000_000
    assert parse_size(42) == 42
    with pytest.raises(ValueError):
        parse_size("lots")


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    doc = {
        "recipients": ["not-a-key"],
        "workers": 0,
        "colour": "blue",
        "folders": [{"path": "in", "destinations": ["pacs", "nowhere"], "after_ack": "move"}],
        "destinations": {
            "pacs": {"kind": "dicomweb", "mode": "file"},
            "scp": {"kind": "dicom", "host": "h", "port": 70000},
            "odd": {"kind": "ftp"},
        },
        "disk": {"low_watermark": "3 GB", "high_watermark": "1 GB"},
        "central": {"url": "ftp://x"},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc, tmp_path)
    problems = "\n".join(err.value.problems)
    for expected in ("recipients: not-a-key", "workers: must be between", "colour: unknown key",
                     "folders[0].destinations: unknown destination 'nowhere'",
                     "folders[0].move_to: required", "destinations.pacs.url: missing",
                     "destinations.pacs.mode:", "destinations.scp.port: must be between",
                     "destinations.odd.kind: must be one of",
                     "disk.high_watermark: must be >=", "central.url: must be an http"):
        assert expected in problems, expected


def test_init_check_and_usage(tmp_path: Path, recipient: str, capsys) -> None:
    path = tmp_path / "agent.toml"
    assert main(["agent", "init", "--config", str(path), "-r", recipient]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["agent", "init", "--config", str(path)]) == 1  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["agent", "check", "--config", str(path)]) == 0
    config = load_config(path)
    assert config.recipients == (recipient,)
    assert config.destinations[0].kind == "folder"
    path.write_text(path.read_text().replace("workers = 2", "workers = -1"))
    assert main(["agent", "check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "scanfort: error: workers: must be between" in err and "scanfort: hint:" in err
    assert main(["agent", "check", "--config", str(tmp_path / "missing.toml")]) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["agent", "enroll"])
    assert exit_.value.code == 2


def test_enroll_writes_id_token_and_recipients(tmp_path: Path, recipient: str, capsys) -> None:
    path = tmp_path / "agent.toml"
    assert main(["agent", "init", "--config", str(path)]) == 0
    with Receiver() as rx:
        rx.recipients = [recipient]
        assert main(["agent", "enroll", "--config", str(path), "--central", rx.url,
                     "--token", "wrong"]) == 1
        assert "refused the enrollment token" in capsys.readouterr().err
        assert main(["agent", "enroll", "--config", str(path), "--central", rx.url + "/",
                     "--token", "enroll-once"]) == 0
    doc = tomllib.loads(path.read_text())
    assert doc["central"]["agent_id"] == "agent-1"
    assert doc["central"]["token"] == TOKEN
    assert doc["central"]["url"] == rx.url
    assert doc["central"]["heartbeat_seconds"] == 15.0
    assert doc["recipients"] == [recipient]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    load_config(path)  # still a valid config, comments kept
    assert "# ScanFort edge agent configuration" in path.read_text()


def test_status_command_reads_the_running_state(tmp_path: Path, recipient: str, capsys) -> None:
    config = write_config(tmp_path, [recipient],
                          {"share": {"kind": "folder", "path": str(tmp_path / "out")}})
    with running(config) as agent:
        drop(config.folders[0].path / "x.raw", b"data" * 10)
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        agent.tick()
        assert main(["agent", "status", "--config", str(config.source)]) == 0
        out = capsys.readouterr().out
        assert "running" in out and "done 1" in out and "share (folder) ok" in out
        assert "workers:      1 of 2 protect worker(s) running, 1 started, 0 killed" in out
        assert main(["agent", "status", "--json", "--config", str(config.source)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["states"] == {"done": 1}
        assert doc["status"]["counters"]["forwarded"] == 1
        assert doc["status"]["workers"]["pids"] == [p for p in (w.pid for w in agent.pool.workers)
                                                    if p is not None]


def test_enroll_writes_the_sites_pseudonym_secret_beside_the_config(
        tmp_path: Path, recipient: str, capsys) -> None:
    from cipher.pseudonym import PseudonymSecret

    path = tmp_path / "agent.toml"
    assert main(["agent", "init", "--config", str(path)]) == 0
    os.chmod(path, 0o640)
    secret = PseudonymSecret.generate()
    with Receiver() as rx:
        rx.recipients = [recipient]
        rx.pseudonym_secret = secret.encode().strip()
        assert main(["agent", "enroll", "--config", str(path), "--central", rx.url,
                     "--token", "enroll-once"]) == 0
    written = tmp_path / "pseudonym.secret"
    assert PseudonymSecret.parse(written.read_text()) == secret
    assert stat.S_IMODE(written.stat().st_mode) == 0o640  # the config's mode, no more
    assert written.stat().st_gid == path.stat().st_gid
    assert rx.pseudonym_secret not in path.read_text()  # the config only names the file
    doc = tomllib.loads(path.read_text())
    assert doc["pseudonym_secret_file"] == "pseudonym.secret"
    assert load_config(path).pseudonym_secret_file == written
    assert rx.pseudonym_secret not in capsys.readouterr().out


def test_dicom_policy_per_folder_and_its_names(tmp_path: Path, recipient: str) -> None:
    from agent.config import DICOM_OPTIONS, ConfigError, parse_config
    from cipher import profile

    assert set(DICOM_OPTIONS) == set(profile.OPTIONS)  # the agent's copy of the names
    share = str(tmp_path / "out")
    base = {"recipients": [recipient], "spool_dir": str(tmp_path / "spool"),
            "destinations": {"share": {"kind": "folder", "path": share, "mode": "dicom"}}}
    doc = {**base, "folders": [
        {"path": str(tmp_path / "a"), "destinations": ["share"]},
        {"path": str(tmp_path / "b"), "destinations": ["share"], "dicom_policy": "pixels-only"},
        {"path": str(tmp_path / "c"), "destinations": ["share"], "dicom_options": []}]}
    config = parse_config(doc, tmp_path)
    assert config.folders[0].dicom_policy == "profile"
    assert config.folders[0].dicom_options == ("retain-uids", "retain-long-full-dates")
    assert config.folders[1].dicom_policy == "pixels-only"
    assert config.folders[2].dicom_options == ()
    bad = {**base, "pseudonym_secret_file": str(tmp_path / "missing"), "folders": [
        {"path": str(tmp_path / "a"), "destinations": ["share"],
         "dicom_options": ["retain-everything"], "dicom_policy": "nothing"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(bad, tmp_path)
    text = str(err.value)
    assert "retain-everything" in text and "dicom_policy" in text
    assert "pseudonym_secret_file" in text
