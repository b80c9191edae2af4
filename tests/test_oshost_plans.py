"""install/uninstall/start/stop/status plans for systemd and Windows, and the CLI."""

from __future__ import annotations

import io
import ntpath
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.oshost import linux, windows
from agent.oshost.errors import ServiceError
from agent.oshost.steps import Command, RemoveFile, WriteFile, execute
from agent.oshost.unit import UNIT_NAME, UnitSpec
from scanfort.cli import main


class Recorder:
    def __init__(self, codes: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.codes = codes or {}

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(tuple(argv))
        return self.codes.get(" ".join(argv[:2]), 0)


def spec() -> UnitSpec:
    return linux.unit_spec(Path("/etc/scanfort/agent.toml"), ["/srv/in"],
                           executable=["/opt/scanfort/scanfort"])


def test_linux_install_creates_user_writes_unit_and_enables(tmp_path: Path) -> None:
    steps = linux.install_plan(spec(), root=tmp_path, user_exists=lambda _: False)
    run = Recorder()
    assert execute(steps, run=run) == 0
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "ExecStart=/opt/scanfort/scanfort service run-host --config /etc/scanfort/agent.toml" in (
        unit.read_text()
    )
    assert run.calls[0][0] == "useradd" and run.calls[0][-1] == "scanfort"
    assert "--system" in run.calls[0] and "/usr/sbin/nologin" in run.calls[0]
    assert run.calls[1:] == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", UNIT_NAME),
        ("systemctl", "restart", UNIT_NAME),
    ]


def test_linux_install_keeps_an_existing_user_and_can_skip_start(tmp_path: Path) -> None:
    steps = linux.install_plan(spec(), root=tmp_path, start=False, user_exists=lambda _: True)
    commands = [s.argv for s in steps if isinstance(s, Command)]
    assert commands == [("systemctl", "daemon-reload"), ("systemctl", "enable", UNIT_NAME)]


def test_linux_uninstall_keeps_going_when_already_stopped(tmp_path: Path) -> None:
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    unit.parent.mkdir(parents=True)
    unit.write_text("x")
    run = Recorder({"systemctl disable": 5})
    execute(linux.uninstall_plan(root=tmp_path), run=run)
    assert not unit.exists()
    assert run.calls[-1] == ("systemctl", "daemon-reload")


def test_a_failing_step_stops_the_plan(tmp_path: Path) -> None:
    run = Recorder({"systemctl daemon-reload": 1})
    with pytest.raises(ServiceError, match="daemon-reload failed"):
        execute(linux.install_plan(spec(), root=tmp_path, user_exists=lambda _: True), run=run)
    assert ("systemctl", "enable", UNIT_NAME) not in run.calls


def test_status_passes_the_exit_code_through() -> None:
    assert execute(linux.status_plan(), run=Recorder({"systemctl status": 3})) == 3
    assert execute(windows.status_plan(), run=Recorder({"sc.exe query": 1060})) == 1060


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    run = Recorder()
    execute(linux.install_plan(spec(), root=tmp_path, user_exists=lambda _: True), run=run,
            dry_run=True, out=out)
    assert run.calls == []
    assert not (tmp_path / "etc").exists()
    assert f"write {tmp_path}/etc/systemd/system/{UNIT_NAME} (mode 0644)" in out.getvalue()
    assert "systemctl enable scanfort.service" in out.getvalue()


def test_windows_layout_from_the_environment() -> None:
    env = {"ProgramW6432": "C:\\Program Files", "ProgramData": "D:\\ProgramData"}
    lay = windows.layout(env)
    assert lay.exe == "C:\\Program Files\\ScanFort\\scanfort.exe"
    assert lay.config_path == "D:\\ProgramData\\scanfort\\agent.toml"
    assert lay.spool_dir == "D:\\ProgramData\\scanfort\\spool"
    assert ntpath.isabs(lay.log_dir)


def test_windows_layout_matches_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    """platformdirs' Windows rules (what agent.config uses there) agree with ours."""
    from platformdirs.windows import Windows

    # platformdirs' documented override of a known folder (the ctypes lookup needs Windows).
    monkeypatch.setenv("WIN_PD_OVERRIDE_COMMON_APPDATA", "C:\\ProgramData")
    try:
        site = Windows(appname="scanfort", appauthor=False).site_config_dir
    except (NotImplementedError, AttributeError):
        pytest.skip("this platformdirs has no WIN_PD_OVERRIDE_* (needs Windows)")
    env = {"ProgramData": "C:\\ProgramData"}
    assert windows.layout(env, site_data_dir=site) == windows.layout(env)


def test_windows_binary_path_quotes_spaces() -> None:
    line = windows.binary_path("C:\\Program Files\\ScanFort\\scanfort.exe",
                               "C:\\ProgramData\\scanfort\\agent.toml")
    assert line == ('"C:\\Program Files\\ScanFort\\scanfort.exe" service run-host '
                    "--config C:\\ProgramData\\scanfort\\agent.toml")


def test_windows_install_plan() -> None:
    steps = windows.install_plan("C:\\Program Files\\ScanFort\\scanfort.exe",
                                 "C:\\ProgramData\\scanfort\\agent.toml",
                                 "C:\\Program Files\\ScanFort\\_internal\\servicemanager.pyd",
                                 ["D:\\CT\\export", "C:\\ProgramData\\scanfort"])
    argvs = [s.argv for s in steps if isinstance(s, Command)]
    create = argvs[0]
    assert create[:3] == ("sc.exe", "create", "ScanFort")
    assert create[create.index("binPath=") + 1].startswith('"C:\\Program Files\\ScanFort\\')
    assert create[create.index("start=") + 1] == "delayed-auto"
    assert create[create.index("obj=") + 1] == "NT SERVICE\\ScanFort"  # virtual account
    grants = [a for a in argvs if a[0] == "icacls.exe"]
    # The data folder once (listed twice), then the watched folder.
    assert [g[1] for g in grants] == ["C:\\ProgramData\\scanfort", "D:\\CT\\export"]
    assert all(g[3] == "NT SERVICE\\ScanFort:(OI)(CI)M" for g in grants)
    failure = next(a for a in argvs if a[1] == "failure")
    assert failure[failure.index("actions=") + 1].startswith("restart/")
    assert ("sc.exe", "failureflag", "ScanFort", "1") in argvs
    eventlog = [a for a in argvs if a[0] == "reg.exe"]
    assert any("EventMessageFile" in a and a[-2].endswith("servicemanager.pyd") for a in eventlog)
    assert argvs[-1] == ("sc.exe", "start", "ScanFort")
    no_start = windows.install_plan("C:\\s.exe", "C:\\a.toml", "C:\\m.pyd", start=False)
    assert all(s.argv[1] != "start" for s in no_start if isinstance(s, Command))


def test_windows_uninstall_keeps_data() -> None:
    steps = windows.uninstall_plan()
    assert not any(isinstance(s, (RemoveFile, WriteFile)) for s in steps)
    assert [s.argv[:2] for s in steps if isinstance(s, Command)][:2] == [
        ("sc.exe", "stop"), ("sc.exe", "delete"),
    ]


def test_winservice_imports_without_pywin32() -> None:
    from agent.oshost import winservice

    assert winservice.AVAILABLE is False
    assert winservice.dispatch("C:\\x.toml") == 1


def test_cli_unit_without_loading_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["service", "unit", "--no-load", "--exec", "/opt/scanfort/scanfort",
                 "--config", "/etc/scanfort/agent.toml", "--read-write", "/srv/scanfort/inbox"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ReadWritePaths=-/srv/scanfort/inbox\n" in out
    assert "ExecStart=/opt/scanfort/scanfort service run-host --config /etc/scanfort/agent.toml" in out


def test_cli_install_dry_run_reports_config_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("workers = 0\n")
    assert main(["service", "install", "--dry-run", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "scanfort: error: folders: list at least one" in err
    assert "scanfort: hint: check it with `scanfort agent check" in err


def test_cli_run_host_exits_78_on_an_invalid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["service", "run-host", "--config", str(tmp_path / "missing.toml")]) == 78
    assert "no such config file" in capsys.readouterr().err


def test_cli_install_dry_run_with_a_valid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pyrage = pytest.importorskip("pyrage")
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'recipients = ["{recipient}"]\nspool_dir = "{tmp_path}/spool"\n'
        f'[destinations.d]\nkind = "folder"\npath = "{tmp_path}/out"\n'
        f'[[folders]]\npath = "{tmp_path}/in"\ndestinations = ["d"]\n'
    )
    assert main(["service", "install", "--dry-run", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "write /etc/systemd/system/scanfort.service (mode 0644)" in out
    assert "systemctl daemon-reload" in out


@pytest.mark.parametrize("action", ["uninstall", "start", "stop", "status"])
def test_cli_picks_the_platform_plan(action: str) -> None:
    import argparse

    from agent.oshost.cli import plan

    args = argparse.Namespace(action=action, config=None, no_start=False, user="scanfort")
    assert plan(args, platform="win32") == getattr(windows, f"{action}_plan")()
    assert plan(args, platform="linux") == getattr(linux, f"{action}_plan")()
