"""The generated systemd unit: content, quoting, and `systemd-analyze verify` cleanliness."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.oshost import linux
from agent.oshost.paths import writable_paths
from agent.oshost.unit import UnitSpec, exec_line, normalize_paths, protect_home, render_unit


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing under CI (Debian package: systemd)")
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    return exe


def verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess[str]:
    unit = directory / "scanfort.service"
    unit.write_text(unit_text)
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def fake_exe(tmp_path: Path) -> Path:
    # systemd-analyze checks that ExecStart names an executable file.
    exe = tmp_path / "opt" / "scanfort" / "scanfort"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_required_settings(fake_exe: Path) -> None:
    spec = linux.unit_spec(
        Path("/etc/scanfort/agent.toml"),
        ["/srv/scanfort/inbox", "/var/lib/scanfort/spool"],
        executable=[str(fake_exe)],
    )
    d = directives(render_unit(spec))
    assert d["Type"] == ["notify"]
    assert d["ExecStart"] == [f"{fake_exe} service run-host --config /etc/scanfort/agent.toml"]
    assert int(d["WatchdogSec"][0]) > 0
    assert d["Restart"] == ["on-failure"]
    assert d["User"] == ["scanfort"] and d["Group"] == ["scanfort"]
    assert d["StateDirectory"] == ["scanfort"] and d["LogsDirectory"] == ["scanfort"]
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes")]:
        assert d[key] == [value], key
    assert d["ReadWritePaths"] == ["-/srv/scanfort/inbox -/var/lib/scanfort/spool"]
    assert d["WantedBy"] == ["multi-user.target"]
    # the cipher runs on its C extension here: no JIT, so no W+X memory and no numba cache
    assert spec.jit is False
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    assert "CacheDirectory" not in d
    assert not any("NUMBA" in e for e in d.get("Environment", []))


def test_unit_for_a_jit_install_allows_numba(fake_exe: Path, tmp_path: Path) -> None:
    """Without the C extension the cipher falls back to numba: W+X memory stays allowed and
    numba gets its kernel cache; selecting numba in the unit's environment does the same."""
    for spec in (
        UnitSpec(exec_start=[str(fake_exe)], jit=True),
        UnitSpec(exec_start=[str(fake_exe)], jit=False, extra_environment=["SCANFORT_CHAOS_BACKEND=numba"]),
    ):
        text = render_unit(spec)
        d = directives(text)
        assert "MemoryDenyWriteExecute" not in d
        assert d["CacheDirectory"] == ["scanfort"]
        assert "NUMBA_CACHE_DIR=/var/cache/scanfort/numba" in d["Environment"]
        result = verify(text, tmp_path)
        assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_jit_detection_follows_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.oshost import unit
    from cipher import chaos

    monkeypatch.setattr(chaos, "_native", None)  # as after an install without a C compiler
    assert unit.cipher_needs_jit() == (importlib.util.find_spec("numba") is not None)
    assert UnitSpec(exec_start=["/x"]).jit == unit.cipher_needs_jit()


def test_generated_unit_passes_systemd_analyze_verify(fake_exe: Path, tmp_path: Path) -> None:
    spec = linux.unit_spec(
        Path("/etc/scan fort/agent%1.toml"),
        ["/srv/in box", "/home/pacs/scans", "/var/lib/scanfort/spool", "/mnt/share$1"],
        executable=[str(fake_exe)],
    )
    result = verify(render_unit(spec), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_report_a_broken_unit(fake_exe: Path, tmp_path: Path) -> None:
    """Guards the test above: verify prints warnings (with exit code 0) for bad keys."""
    text = render_unit(UnitSpec(exec_start=[str(fake_exe)]))
    text = text.replace("[Service]\n", "[Service]\nProtectSystem=sometimes\nBogus=1\n")
    result = verify(text, tmp_path)
    assert "Bogus" in result.stderr and "sometimes" in result.stderr


def test_exec_start_quoting_survives_systemd_parsing(fake_exe: Path, tmp_path: Path) -> None:
    """systemd-analyze dump is unavailable without a running manager; check the escapes."""
    line = exec_line([str(fake_exe), "--config", "/etc/a b/x%y$z\"q.toml"])
    assert line == f'{fake_exe} --config "/etc/a b/x%%y$$z\\"q.toml"'
    with pytest.raises(ValueError):
        exec_line(["scanfort", "run"])


def test_paths_are_normalized_and_nested_ones_dropped() -> None:
    assert normalize_paths(["/srv/in/", "/srv/in/sub", "/srv/in", "/srv/inbox", "/a/../b"]) == [
        "/b", "/srv/in", "/srv/inbox",
    ]
    with pytest.raises(ValueError):
        normalize_paths(["relative/dir"])


def test_protect_home_relaxes_only_for_paths_under_homes() -> None:
    assert protect_home(["/srv/x", "/homeless/y"]) == "yes"
    assert protect_home(["/srv/x", "/home/pacs/scans"]) == "read-only"
    assert protect_home(["/root/scans"]) == "read-only"


def test_writable_paths_come_from_a_real_config(tmp_path: Path) -> None:
    pyrage = pytest.importorskip("pyrage")
    from agent.config import load_config

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
recipients = ["{recipient}"]
spool_dir = "/var/lib/scanfort/spool"
log_dir = "/var/log/scanfort"

[destinations.share]
kind = "folder"
path = "/mnt/pacs-share"

[[folders]]
path = "/srv/ct"
destinations = ["share"]
after_ack = "move"
move_to = "/srv/ct-done"

[[folders]]
path = "/home/mr/out"
destinations = ["share"]
"""
    )
    config = load_config(cfg)
    paths = writable_paths(config)
    assert sorted(paths) == sorted([
        "/var/lib/scanfort/spool", "/var/log/scanfort", "/srv/ct", "/srv/ct-done",
        "/home/mr/out", "/mnt/pacs-share",
    ])
    text = render_unit(linux.unit_spec(cfg, paths, executable=["/opt/scanfort/scanfort"]))
    assert "ProtectHome=read-only" in text
    assert f"--config {cfg}" in text
