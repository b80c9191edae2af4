"""Long CLI work: progress on stderr (bar on a terminal, periodic lines otherwise), parallel
jobs, skips that say why, and ``--json`` results (scanfort/progress.py, scanfort/batch.py)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from scanfort.batch import Failure, Skipped, run_batch
from scanfort.progress import Progress, style_for
from tests.test_cli_protect import run


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_style_follows_the_stream_and_the_flags() -> None:
    assert style_for(_Tty()) == "bar"
    assert style_for(io.StringIO()) == "lines"
    assert style_for(_Tty(), quiet=True) == "lines"
    assert style_for(_Tty(), json=True) == "lines"


def test_lines_are_periodic_with_rate_and_time_left() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = Progress("encrypt", 2000, out, style="lines", interval=5.0, clock=clock)
    assert out.getvalue() == "scanfort: encrypt: 2000 files to do\n"  # at once
    out.truncate(0)
    out.seek(0)
    for _ in range(100):  # 100 files in 4 s: no line yet
        clock.now += 0.04
        progress.advance(nbytes=500_000)
    assert out.getvalue() == ""
    for _ in range(100):  # the 5 s mark passes: exactly one line
        clock.now += 0.04
        progress.advance(nbytes=500_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("scanfort: encrypt: ")
    assert "/2000 files (" in lines[0] and "MB" in lines[0] and "files/s" in lines[0]
    assert "left" in lines[0]
    done = int(lines[0].split(": ")[2].split("/")[0])
    assert 120 <= done <= 130  # the line came at the 5 s mark, not at the end


def test_bar_redraws_in_place_and_messages_do_not_tear_it() -> None:
    out = _Tty()
    progress = Progress("decrypt", 3, out, clock=_Clock())
    assert progress.style == "bar"
    progress.advance()
    progress.write("scanfort: error: x: broken")
    progress.advance()
    progress.close()
    text = out.getvalue()
    assert text.count("\r") >= 3 and "[########" in text
    assert "\x1b[2Kscanfort: error: x: broken\n" in text  # cleared line, then the message
    assert text.endswith("\r\x1b[2K")  # nothing left on the terminal line


def test_a_single_item_prints_no_progress() -> None:
    out = _Tty()
    progress = Progress("encrypt", 1, out)
    progress.advance()
    progress.close()
    assert out.getvalue() == ""


def _op(source: Path, target: Path) -> str:
    text = source.read_text()
    if text == "boom":
        raise OSError(5, "Input/output error")
    if text == "bug":
        raise KeyError("internal")
    if text == "skip":
        raise Skipped("already done", "nothing to do")
    target.write_text(text.upper())
    return "file"


def _describe(exc: BaseException) -> Failure:
    if isinstance(exc, OSError):
        return Failure(str(exc.strerror), "OSError")
    return Failure(f"internal error ({type(exc).__name__})", None)


@pytest.mark.parametrize("jobs", [1, 2])
def test_batch_counts_hints_once_and_reports_json_in_input_order(tmp_path, jobs) -> None:
    items = []
    for i, text in enumerate(["a", "boom", "b", "bug", "skip", "boom", "c"]):
        src = tmp_path / f"in{i}.txt"
        src.write_text(text)
        items.append((src, tmp_path / f"out{i}.txt"))
    err, out = io.StringIO(), io.StringIO()
    code = run_batch(items, "encrypted", _op, _describe, {"OSError": "check the disk"},
                     jobs=jobs, as_json=True, stderr=err, stdout=out)
    assert code == 1
    lines = err.getvalue().splitlines()
    assert lines.count("scanfort: hint: check the disk") == 1
    assert sum("Input/output error" in ln for ln in lines) == 2
    assert any("internal error (KeyError)" in ln for ln in lines)
    assert "encrypted 3 files (3 file mode), skipped 1 (first: " in lines[-2]
    assert "3 failed" in lines[-2] and lines[-1] == "scanfort: hint: nothing to do"
    records = json.loads(out.getvalue())
    assert [r["input"] for r in records] == [str(s) for s, _ in items]
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "failed", "skipped",
                                              "failed", "ok"]
    assert (tmp_path / "out6.txt").read_text() == "C"  # the work really ran (in a child too)


def test_cli_parallel_encrypt_json_and_protected_inputs_skipped(tmp_path, capsys) -> None:
    key = tmp_path / "site.key"
    assert run("keygen", "-o", str(key)) == 0
    recipient = capsys.readouterr().out.strip()
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        (inputs / f"r{i:02d}.bin").write_bytes(bytes([i]) * (1000 + i))
    out = tmp_path / "out"
    assert run("encrypt", "-j", "2", "--json", "-r", recipient, "-o", str(out), str(inputs)) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert len(records) == 12 and {r["status"] for r in records} == {"ok"}
    assert captured.err.splitlines()[-1] == "scanfort: encrypted 12 files (12 file mode)"
    # encrypting the outputs again: each is recognised as protected and skipped, not wrapped
    again = tmp_path / "again"
    assert run("encrypt", "-r", recipient, "-o", str(again), str(out)) == 0
    err = capsys.readouterr().err
    assert "encrypted 0 files, skipped 12 (first: " in err
    assert "already protected (file mode)" in err and "scanfort decrypt restores it" in err
    assert not again.exists() or not any(again.iterdir())
    restored = tmp_path / "restored"
    assert run("decrypt", "-q", "-j", "2", "-i", str(key), "-o", str(restored), str(out)) == 0
    for i in range(12):
        assert (restored / f"r{i:02d}.bin").read_bytes() == bytes([i]) * (1000 + i)


def test_unknown_totals_count_without_percent_or_eta() -> None:
    clock, out = _Clock(), io.StringIO()
    progress = Progress("gateway export", None, out, style="lines", unit="instances",
                        interval=1.0, clock=clock)
    assert out.getvalue() == "scanfort: gateway export: instances to do\n"
    for _ in range(30):
        clock.now += 0.1
        progress.advance()
    line = out.getvalue().splitlines()[-1]
    assert re.fullmatch(r"scanfort: gateway export: \d+ instances, [\d.]+ instances/s", line)
    assert "%" not in line and "left" not in line
