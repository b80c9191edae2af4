"""The shipped artefacts: build the PyInstaller bundle and the .deb, run the frozen
``scanfort``, and inspect the package in a scratch root.

Slow (one bundle build, about a minute on two cores, plus the .deb); ``.ci/run`` runs it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import scanfort
from agent.oshost.paths import writable_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3+): the process and its children
# can no longer map memory writable and executable, or make memory executable later; what
# systemd's MemoryDenyWriteExecute=yes enforces (with a seccomp filter) for the service.
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl


def deny_write_execute() -> None:
    """``preexec_fn``: run the child as under MemoryDenyWriteExecute=yes."""
    if _PRCTL(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


@functools.cache
def mdwe_supported() -> bool:
    try:
        subprocess.run(["true"], preexec_fn=deny_write_execute, check=True)
    except (subprocess.SubprocessError, OSError):
        return False
    return True


def bundle_has_jit(built: Built) -> bool:
    return (built.bundle / "_internal" / "numba").exists()


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing under CI (Debian package: {package})")
        pytest.skip(f"{tool} not installed (Debian package: {package})")


@dataclass(frozen=True)
class Built:
    bundle: Path  # the --onedir folder
    exe: Path
    deb: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need("dpkg-deb", "dpkg")
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("PyInstaller is missing under CI (dev extra)")
        pytest.skip("PyInstaller not installed (pip install -e '.[dev]')")
    prebuilt = os.environ.get("SCANFORT_PREBUILT")  # a developer's shortcut, never CI's
    if prebuilt and os.environ.get("CI") != "true":
        out = Path(prebuilt)
        return Built(out / "scanfort", out / "scanfort" / "scanfort",
                     next(out.glob("scanfort_*.deb")))
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OUT=str(out), WORK=str(REPO / "build" / "pyinstaller-test"))
    result = subprocess.run(
        ["bash", str(REPO / "installer" / "build.sh"), "all"],
        env=env, capture_output=True, text=True, timeout=1500, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    debs = list(out.glob("scanfort_*.deb"))
    assert len(debs) == 1
    return Built(bundle=out / "scanfort", exe=out / "scanfort" / "scanfort", deb=debs[0])


def frozen(built: Built, *args: str, tmp: Path | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if tmp is not None:
        env |= {"TMPDIR": str(tmp), "HOME": str(tmp), "NUMBA_CACHE_DIR": str(tmp / "numba")}
    return subprocess.run([str(built.exe), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


# --- the frozen binary -------------------------------------------------------------


def test_frozen_version(built: Built, tmp_path: Path) -> None:
    result = frozen(built, "--version", tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"scanfort {scanfort.__version__}"


def test_bundle_is_onedir_and_leaves_no_temp_dirs(built: Built, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    assert frozen(built, "--version", tmp=scratch).returncode == 0
    assert [p.name for p in scratch.iterdir()] == []  # a onefile build would leave _MEI*
    # onedir: the runtime and the libraries sit unpacked beside the executable.
    assert list((built.bundle / "_internal").glob("libpython3*.so*"))


def test_bundle_carries_the_native_stack(built: Built) -> None:
    from cipher import chaos

    internal = built.bundle / "_internal"
    names = {p.name.split(".")[0] for p in internal.iterdir()}
    assert {"numpy", "pydicom", "pyrage"} <= names
    assert not {"numba", "llvmlite"} & names  # no JIT in the bundle, whatever is installed
    if chaos._native is not None:
        assert [p.name for p in (internal / "cipher").glob("_native.*")], "cipher._native missing"


def test_frozen_cipher_runs_without_writable_executable_memory(built: Built, tmp_path: Path) -> None:
    """The frozen bench (every native kernel, encrypt and decrypt) runs as under
    MemoryDenyWriteExecute=yes, which the generated unit sets for a bundle without JIT."""
    if bundle_has_jit(built):
        pytest.skip("the bundle carries numba (built without cipher._native): its JIT needs W+X memory")
    if not mdwe_supported():
        pytest.skip("kernel without prctl(PR_SET_MDWE) (Linux < 6.3): cannot emulate MemoryDenyWriteExecute")
    if importlib.util.find_spec("numba") is not None:  # the emulation must bite: a JIT fails under it
        jit = subprocess.run([sys.executable, "-c", "import numba; numba.njit(lambda x: x + 1)(1)"],
                             preexec_fn=deny_write_execute, capture_output=True, timeout=300, check=False)
        assert jit.returncode != 0
    result = subprocess.run([str(built.exe), "bench", "--json", "--min-time", "0"],
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path),
                                 "TMPDIR": str(tmp_path)},
                            preexec_fn=deny_write_execute, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    kernels = {r["kernel"] for r in doc["rows"] if r["what"].startswith("chaos")}
    assert "table" in kernels and "reference" in kernels
    assert doc["peak_rss"] == []  # not measured from a frozen binary


def test_frozen_commands_are_registered(built: Built, tmp_path: Path) -> None:
    result = frozen(built, "--help", tmp=tmp_path)
    assert result.returncode == 0
    for command in ("agent", "service"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), result.stdout


def _has_command(built: Built, tmp: Path, name: str) -> bool:
    out = frozen(built, "--help", tmp=tmp).stdout
    return re.search(rf"^\s+{name}\b", out, re.M) is not None


def test_frozen_keygen_encrypt_decrypt_round_trip(built: Built, tmp_path: Path) -> None:
    """keygen, then file mode and DICOM mode (pydicom inside the bundle) both ways."""
    if not all(_has_command(built, tmp_path, c) for c in ("keygen", "encrypt", "decrypt")):
        pytest.skip("scanfort keygen/encrypt/decrypt are not registered in this tree yet")
    import pydicom
    from pydicom.data import get_testdata_file

    key = tmp_path / "site.key"
    result = frozen(built, "keygen", "-o", str(key), tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    recipient = result.stdout.strip()
    assert recipient.startswith("age1")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    src = tmp_path / "src"
    src.mkdir()
    plain = os.urandom(300_000)
    (src / "scan.bin").write_bytes(plain)
    ct = get_testdata_file("CT_small.dcm")
    assert ct is not None
    shutil.copy(ct, src / "ct.dcm")

    enc, dec = tmp_path / "enc", tmp_path / "dec"
    r = frozen(built, "encrypt", "-r", recipient, "-o", str(enc), str(src / "scan.bin"),
               str(src / "ct.dcm"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (enc / "scan.bin.age").read_bytes()[:21] == b"age-encryption.org/v1"
    protected = pydicom.dcmread(enc / "ct.dcm")  # DICOM mode: still a valid DICOM file
    original = pydicom.dcmread(ct)
    assert protected.PixelData != original.PixelData

    r = frozen(built, "decrypt", "-i", str(key), "-o", str(dec), str(enc / "scan.bin.age"),
               str(enc / "ct.dcm"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (dec / "scan.bin").read_bytes() == plain
    restored = pydicom.dcmread(dec / "ct.dcm")
    assert restored.PixelData == original.PixelData
    assert restored.SOPInstanceUID == original.SOPInstanceUID


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield sock
    finally:
        sock.close()


def _wait_for(sock: socket.socket, prefix: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            lines = sock.recv(4096).decode().split("\n")
        except TimeoutError:
            break
        seen += lines
        if any(line.startswith(prefix) for line in lines):
            return seen
    raise AssertionError(f"no {prefix} within {timeout} s; got {seen}")


def _wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout} s"
        time.sleep(0.2)


def test_frozen_agent_pass_under_systemd_notify(
    built: Built, tmp_path: Path, notify_socket: socket.socket
) -> None:
    """The frozen binary as systemd runs it: READY, a scan protected and delivered,
    WATCHDOG pings, SIGTERM → STOPPING and exit 0; the delivered copy decrypts."""
    from cipher import keys, unprotect

    identity, recipient = keys.generate_identity()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'recipients = ["{recipient}"]\n'
        f'spool_dir = "{tmp_path}/spool"\nlog_dir = "{tmp_path}/logs"\n'
        "settle_seconds = 0.5\nreconcile_seconds = 1\n"
        f'[destinations.out]\nkind = "folder"\npath = "{outbox}"\n'
        f'[[folders]]\npath = "{inbox}"\ndestinations = ["out"]\n'
    )
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path),
           "TMPDIR": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "4000000"}
    # Without a JIT in the bundle the unit sets MemoryDenyWriteExecute=yes: run the same way.
    no_wx = not bundle_has_jit(built) and mdwe_supported()
    proc = subprocess.Popen([str(built.exe), "service", "run-host", "--config", str(cfg)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=deny_write_execute if no_wx else None)
    try:
        _wait_for(notify_socket, "READY=1", timeout=180)
        plain = os.urandom(250_000)
        (inbox / "scan.bin").write_bytes(plain)
        _wait_file(outbox / "scan.bin.age", timeout=180)
        assert "WATCHDOG=1" in _wait_for(notify_socket, "WATCHDOG=1", timeout=10)
        proc.send_signal(signal.SIGTERM)
        _wait_for(notify_socket, "STOPPING=1", timeout=30)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert (inbox / "scan.bin").read_bytes() == plain  # after_ack = keep
    import io

    out = io.BytesIO()
    with open(outbox / "scan.bin.age", "rb") as fh:
        unprotect(fh, out, [identity])
    assert out.getvalue() == plain


# --- the Debian package ------------------------------------------------------------


@pytest.fixture(scope="module")
def unpacked(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scratch-root")
    subprocess.run(["dpkg-deb", "-x", str(built.deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(built.deb), str(root / "DEBIAN")], check=True)
    return root


def _listing(deb: Path) -> dict[str, tuple[str, str, str]]:
    """path → (mode string, owner/group, link target) from ``dpkg-deb -c``."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         check=True).stdout
    entries = {}
    for line in out.splitlines():
        parts = line.split(None, 5)
        name = parts[5]
        target = ""
        if " -> " in name:
            name, target = name.split(" -> ", 1)
        entries[name.removeprefix(".").rstrip("/") or "/"] = (parts[0], parts[1], target)
    return entries


def test_deb_control_and_conffiles(unpacked: Path) -> None:
    control = dict(
        line.split(": ", 1) for line in (unpacked / "DEBIAN" / "control").read_text().splitlines()
        if ": " in line and not line.startswith(" ")
    )
    assert control["Package"] == "scanfort"
    assert control["Version"] == scanfort.__version__
    assert "adduser" in control["Depends"]
    assert int(control["Installed-Size"]) > 10_000
    assert (unpacked / "DEBIAN" / "conffiles").read_text().split() == ["/etc/scanfort/agent.toml"]
    for script in ("postinst", "prerm", "postrm"):
        path = unpacked / "DEBIAN" / script
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        subprocess.run(["/bin/sh", "-n", str(path)], check=True)


def test_deb_files_owners_and_permissions(built: Built) -> None:
    entries = _listing(built.deb)
    assert {owner for _, owner, _ in entries.values()} == {"root/root"}
    assert entries["/opt/scanfort/scanfort"][0] == "-rwxr-xr-x"
    assert entries["/etc/scanfort/agent.toml"][0] == "-rw-r-----"  # may hold the token
    assert entries["/lib/systemd/system/scanfort.service"][0] == "-rw-r--r--"
    assert entries["/usr/bin/scanfort"][0].startswith("l")
    assert entries["/usr/bin/scanfort"][2] == "/opt/scanfort/scanfort"
    # State is never part of the package, so upgrades and removal cannot touch the spool.
    assert not [p for p in entries if p.startswith(("/var/", "/srv/"))]
    # Nothing group- or world-writable (symlinks always show rwx and are exempt).
    assert not [p for p, (m, _, _) in entries.items()
                if not m.startswith("l") and ("w" in m[5] or "w" in m[8])]


def test_deb_bundle_runs_from_the_scratch_root(unpacked: Path, tmp_path: Path) -> None:
    exe = unpacked / "opt" / "scanfort" / "scanfort"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                            timeout=120, check=False, env={"PATH": "/usr/bin:/bin",
                                                           "TMPDIR": str(tmp_path)})
    assert result.stdout.strip() == f"scanfort {scanfort.__version__}"


def test_deb_unit_verifies_and_matches_the_default_config(unpacked: Path, tmp_path: Path) -> None:
    from agent.config import load_config
    from cipher import keys

    unit = (unpacked / "lib" / "systemd" / "system" / "scanfort.service").read_text()
    assert "ExecStart=/opt/scanfort/scanfort service run-host --config /etc/scanfort/agent.toml" in unit
    assert "Type=notify" in unit and "ProtectSystem=strict" in unit
    jit = (unpacked / "opt" / "scanfort" / "_internal" / "numba").exists()
    assert ("MemoryDenyWriteExecute=yes" in unit) == (not jit)  # no JIT in the bundle: no W+X
    assert ("NUMBA_CACHE_DIR" in unit) == jit

    # The default config is valid once a recipient is added, and the unit's writable
    # paths are exactly the ones it names.
    _, recipient = keys.generate_identity()
    cfg = tmp_path / "agent.toml"
    default = (unpacked / "etc" / "scanfort" / "agent.toml").read_text()
    cfg.write_text(default.replace("recipients = [", f'recipients = [\n  "{recipient}",', 1))
    expected = sorted("-" + p for p in writable_paths(load_config(cfg)))
    rw = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert sorted(rw.removeprefix("ReadWritePaths=").split()) == expected

    need("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at the unpacked binary.
    local = tmp_path / "scanfort.service"
    local.write_text(unit.replace("/opt/scanfort/scanfort", str(unpacked / "opt/scanfort/scanfort")))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def _fake_bin(tmp: Path, names: list[str], fail: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Shadow the system commands a maintainer script calls; each logs its argv."""
    bin_dir, log = tmp / "bin", tmp / "calls.log"
    bin_dir.mkdir()
    for name in names:
        script = bin_dir / name
        code = 1 if name in fail else 0
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit {code}\n')
        script.chmod(0o755)
    return bin_dir, log


MAINT_TOOLS = ["adduser", "getent", "install", "chgrp", "chmod", "systemctl", "rm"]


def test_postinst_creates_the_user_and_enables_but_waits_for_a_config(
    unpacked: Path, tmp_path: Path
) -> None:
    bin_dir, log = _fake_bin(tmp_path, MAINT_TOOLS, fail=("getent",))
    result = subprocess.run(["/bin/sh", str(unpacked / "DEBIAN" / "postinst"), "configure"],
                            env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    adduser = next(c for c in calls if c.startswith("adduser "))
    assert "--system" in adduser and adduser.endswith(" scanfort")
    assert any(c.startswith("install -d -o scanfort -g scanfort -m 0750 /var/lib/scanfort")
               for c in calls)
    assert "systemctl enable scanfort.service" in calls
    # /opt/scanfort/scanfort is not installed here, so the config check fails: no start.
    assert not any(c.startswith("systemctl restart") for c in calls)
    assert "scanfort service install" in result.stderr


def test_postinst_keeps_an_existing_user(unpacked: Path, tmp_path: Path) -> None:
    bin_dir, log = _fake_bin(tmp_path, MAINT_TOOLS)
    subprocess.run(["/bin/sh", str(unpacked / "DEBIAN" / "postinst"), "configure", "0.0.9"],
                   env={"PATH": str(bin_dir)}, capture_output=True, check=True)
    assert not any(c.startswith("adduser") for c in log.read_text().splitlines())


def test_postrm_keeps_the_spool_on_remove_and_deletes_it_on_purge(
    unpacked: Path, tmp_path: Path
) -> None:
    bin_dir, log = _fake_bin(tmp_path, MAINT_TOOLS)
    postrm = str(unpacked / "DEBIAN" / "postrm")
    subprocess.run(["/bin/sh", postrm, "remove"], env={"PATH": str(bin_dir)}, check=True)
    assert not log.exists() or not any(c.startswith("rm ") for c in log.read_text().splitlines())
    subprocess.run(["/bin/sh", postrm, "purge"], env={"PATH": str(bin_dir)}, check=True)
    rm = next(c for c in log.read_text().splitlines() if c.startswith("rm -rf"))
    assert "/var/lib/scanfort" in rm.split() and "/etc/scanfort" in rm.split()
