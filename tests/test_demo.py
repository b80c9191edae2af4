"""The README's main command: ``scanfort demo`` runs central + agent end to end."""

from __future__ import annotations

import shlex
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from cipher import unprotect
from tests.peers import free_port

pytestmark = pytest.mark.slow


def test_demo_once_protects_and_delivers_samples(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "scanfort", "demo", "--dir", str(root), "--port", str(free_port()), "--once", "--timeout", "240"],
        capture_output=True, text=True, timeout=400, check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "dashboard: http://127.0.0.1:" in done.stdout and "login: admin / " in done.stdout
    # --dir moves every path the demo prints; the printed commands work as printed
    printed = [w.rstrip(",.)") for line in done.stdout.splitlines() for w in line.split()
               if w.startswith("/") and len(w) > 1]
    assert printed
    assert [w for w in printed if not Path(w).is_relative_to(root)
            and Path(w).name != "scanfort"] == []
    command = next(line.split("decrypt a copy: ", 1)[1] for line in done.stdout.splitlines()
                   if "decrypt a copy: " in line)
    printed_run = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                 timeout=120, check=False)
    assert printed_run.returncode == 0, printed_run.stderr
    assert sorted(p.name for p in (root / "restored").iterdir()) == sorted(
        p.name for p in (root / "inbox").iterdir())
    objects = [p for p in (root / "central" / "objects").rglob("*") if p.is_file()]
    inbox = sorted((root / "inbox").iterdir())
    assert len(objects) == len(inbox) >= 5
    identities = [line for line in (root / "site-identity.txt").read_text().splitlines() if line.startswith("AGE-SECRET-KEY-")]
    for original in inbox:
        protected = root / "outbox" / original.name
        plain = original.read_bytes()
        assert protected.read_bytes() != plain
        out = BytesIO()
        with protected.open("rb") as fh:
            unprotect(fh, out, identities)
        restored = pydicom.dcmread(BytesIO(out.getvalue()))
        expected = pydicom.dcmread(original)
        assert restored == expected
        assert restored.PixelData == expected.PixelData
