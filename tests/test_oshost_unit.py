"""The generated systemd unit: content, quoting, and `systemd-analyze verify` cleanliness."""

from __future__ import annotations

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
    # the cipher's kernels are compiled ahead of time: no JIT, so no W+X memory
    assert d["MemoryDenyWriteExecute"] == ["yes"]
    assert "CacheDirectory" not in d
    assert not any("NUMBA" in e for e in d.get("Environment", []))


def test_unit_always_denies_writable_executable_memory(fake_exe: Path, tmp_path: Path) -> None:
    """No install generates code at run time any more (numba is gone): whatever the
    environment entries, W+X memory is denied and there is no JIT cache directory."""
    for env in ((), ("SCANFORT_CHAOS_BACKEND=numba",), ("NUMBA_CACHE_DIR=/tmp/x",)):
        text = render_unit(UnitSpec(exec_start=[str(fake_exe)], extra_environment=env))
        d = directives(text)
        assert d["MemoryDenyWriteExecute"] == ["yes"]
        assert "CacheDirectory" not in d
        result = verify(text, tmp_path)
        assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


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
