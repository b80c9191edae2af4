"""The sd_notify protocol against a real AF_UNIX datagram socket, and the systemd host."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.oshost.host import (
    EXIT_FAILURE,
    Outcome,
    SystemdReporter,
    host_in_thread,
    run_systemd_host,
)
from agent.oshost.notify import Notifier, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


class NotifySocket:
    """A listening notify socket, like the one systemd passes in $NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = 5.0) -> list[str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def receive_all(self, timeout: float = 0.2) -> list[list[str]]:
        messages = []
        while True:
            try:
                messages.append(self.receive(timeout))
            except TimeoutError:
                return messages


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield NotifySocket(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    name = f"scanfort-test-{os.getpid()}-{threading.get_ident()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield NotifySocket(sock, "@" + name)
    finally:
        sock.close()


def test_ready_status_and_stopping_reach_a_path_socket(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value})
    assert notifier.enabled
    assert notifier.ready("watching")
    assert notify_socket.receive() == ["READY=1", "STATUS=watching"]
    assert notifier.stopping()
    assert notify_socket.receive() == ["STOPPING=1"]


def test_abstract_namespace_socket(abstract_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": abstract_socket.env_value})
    assert notifier.status("hello")
    assert abstract_socket.receive() == ["STATUS=hello"]


def test_without_a_manager_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.tick()
    # A relative path is not a valid notify socket; libsystemd ignores it too.
    assert not Notifier({"NOTIFY_SOCKET": "relative.sock"}).enabled


def test_a_vanished_manager_does_not_break_the_service(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.send("READY=1") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "43"}, None),  # meant for another pid
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=42) == expected


def test_watchdog_pings_are_throttled_to_half_the_period(notify_socket: NotifySocket) -> None:
    now = [100.0]
    notifier = Notifier(
        {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "10000000"},
        clock=lambda: now[0],
    )
    assert notifier.tick()  # first ping immediately
    assert not notifier.tick()  # same instant: throttled
    now[0] += 4.9
    assert not notifier.tick()
    now[0] += 0.2  # 5.1 s after the first ping: half of WatchdogSec=10 has passed
    assert notifier.tick()
    assert notify_socket.receive_all() == [["WATCHDOG=1"], ["WATCHDOG=1"]]


def fake_loop(
    ticks: int = 3, trigger: Callable[[], None] | None = None
) -> Callable[..., None]:
    """A stand-in for agent.runner.run honouring the same contract."""

    def run(
        config: object,
        stop: threading.Event,
        on_ready: Callable[[], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        assert on_ready is not None and on_tick is not None
        on_ready()
        for _ in range(ticks):
            on_tick()
        if trigger is not None:
            trigger()
        assert stop.wait(10), "the host never set the stop event"

    return run


def test_systemd_host_sigterm_sends_stopping_and_returns_zero(
    notify_socket: NotifySocket,
) -> None:
    notifier = Notifier(
        {"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "2000000"},
    )
    runner = fake_loop(trigger=lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    assert run_systemd_host(object(), runner=runner, notifier=notifier) == 0
    assert signal.getsignal(signal.SIGTERM) == previous  # handlers restored
    messages = notify_socket.receive_all()
    assert messages[0] == ["READY=1", "STATUS=watching"]
    assert ["WATCHDOG=1"] in messages
    assert messages[-1][0] == "STOPPING=1"
    assert sum(m[0] == "STOPPING=1" for m in messages) == 1


def test_systemd_host_reports_a_crashing_loop(notify_socket: NotifySocket) -> None:
    def crash(config: object, stop: threading.Event, on_ready: object = None,
              on_tick: object = None) -> None:
        raise RuntimeError("boom /data/PATIENT_NAME.dcm")

    import io

    err = io.StringIO()
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.env_value})
    assert run_systemd_host(object(), runner=crash, notifier=notifier, stderr=err) == EXIT_FAILURE
    assert "builtins.RuntimeError" in err.getvalue()
    assert "PATIENT" not in err.getvalue()  # exception messages may carry file names
    messages = notify_socket.receive_all()
    assert messages[0] == ["STATUS=failed: builtins.RuntimeError"]
    assert messages[-1][0] == "STOPPING=1"


def test_real_sigterm_from_outside_stops_a_hosted_process(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """A separate process hosts a loop; systemd's SIGTERM arrives from outside."""
    script = tmp_path / "hosted.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, threading
            from agent.oshost.host import run_systemd_host

            def loop(config, stop, on_ready=None, on_tick=None):
                on_ready()
                while not stop.wait(0.05):
                    on_tick()
                sys.stdout.write("parked\\n")

            raise SystemExit(run_systemd_host(None, runner=loop))
            """
        )
    )
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.env_value, WATCHDOG_USEC="200000",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert notify_socket.receive(timeout=30) == ["READY=1", "STATUS=watching"]
        assert notify_socket.receive(timeout=5) == ["WATCHDOG=1"]
        # WATCHDOG_PID unset → the child pings; at 0.1 s intervals more arrive.
        assert notify_socket.receive(timeout=5) == ["WATCHDOG=1"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out == "parked\n"
    rest = notify_socket.receive_all()
    assert rest and rest[-1][0] == "STOPPING=1"


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def ready(self) -> None:
        self.events.append("ready")

    def tick(self) -> None:
        self.events.append("tick")

    def stopping(self) -> None:
        self.events.append("stopping")

    def failed(self, error: BaseException) -> None:
        self.events.append(f"failed:{type(error).__name__}")


def test_threaded_host_stops_cleanly_within_the_deadline() -> None:
    stop = threading.Event()
    rec = _Recorder()
    threading.Timer(0.2, stop.set).start()
    assert host_in_thread(None, stop, rec, fake_loop(ticks=1), stop_timeout=5, poll=0.05) is (
        Outcome.CLEAN
    )
    assert rec.events == ["ready", "tick", "stopping"]


def test_threaded_host_gives_up_on_a_loop_that_ignores_stop() -> None:
    stop = threading.Event()
    release = threading.Event()

    def stubborn(config: object, stop: threading.Event, on_ready: object = None,
                 on_tick: object = None) -> None:
        release.wait(30)

    threading.Timer(0.1, stop.set).start()
    try:
        outcome = host_in_thread(None, stop, _Recorder(), stubborn, stop_timeout=0.3, poll=0.05)
    finally:
        release.set()
    assert outcome is Outcome.TIMEOUT


def test_threaded_host_reports_failure() -> None:
    def crash(config: object, stop: threading.Event, on_ready: object = None,
              on_tick: object = None) -> None:
        raise ValueError("x")

    rec = _Recorder()
    assert host_in_thread(None, threading.Event(), rec, crash, stop_timeout=1) is Outcome.FAILED
    assert rec.events == ["failed:ValueError", "stopping"]


def test_reporter_sends_stopping_once(notify_socket: NotifySocket) -> None:
    reporter = SystemdReporter(Notifier({"NOTIFY_SOCKET": notify_socket.env_value}))
    reporter.stopping()
    reporter.stopping()
    assert len(notify_socket.receive_all()) == 1


def test_service_run_host_hosts_the_real_agent_loop(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """`scanfort service run-host` with the real agent.runner: READY, a scan delivered,
    SIGTERM → STOPPING and exit 0 (the frozen variant is in test_installer.py)."""
    from cipher import keys

    _, recipient = keys.generate_identity()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'recipients = ["{recipient}"]\n'
        f'spool_dir = "{tmp_path}/spool"\nlog_dir = "{tmp_path}/logs"\n'
        "settle_seconds = 0.3\nreconcile_seconds = 1\n"
        f'[destinations.out]\nkind = "folder"\npath = "{outbox}"\n'
        f'[[folders]]\npath = "{inbox}"\ndestinations = ["out"]\n'
    )
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.env_value, WATCHDOG_USEC="2000000",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanfort", "service", "run-host", "--config", str(cfg)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert notify_socket.receive(timeout=120)[0] == "READY=1"
        (inbox / "a.bin").write_bytes(os.urandom(10_000))
        target = outbox / "a.bin.age"
        for _ in range(600):
            if target.exists():
                break
            threading.Event().wait(0.1)
        assert target.exists(), "the scan was not delivered within 60 s"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    messages = notify_socket.receive_all()
    assert ["WATCHDOG=1"] in messages
    assert messages[-1][0] == "STOPPING=1"
