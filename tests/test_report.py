"""``scanfort cipher-report`` and ``scanfort bench`` produce their tables from real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from cipher import chaos
from scanfort import benchmark
from scanfort.cli import main


def test_report_on_a_dicom_file_json(capsys: pytest.CaptureFixture[str]) -> None:
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert ct is not None
    assert main(["cipher-report", "--json", str(ct)]) == 0
    doc = json.loads(capsys.readouterr().out)
    (img,) = doc["images"]
    assert img["shape"] == [128, 128] and img["entropy_cipher"] > 7.9
    assert set(img["differential"]) == {"first", "middle", "last", "random"}
    for d in img["differential"].values():
        assert d["npcr_mean"] >= img["npcr_critical"]
    assert abs(img["correlation_cipher"]["horizontal"]) < 0.05 < img["correlation_plain"]["horizontal"]
    assert all(s["nonlinearity"] == 112 and s["du"] == 4 for s in doc["sbox"]["per_sbox"])
    assert doc["sbox"]["distinct"] == doc["sbox"]["samples"]
    assert doc["backend"] == chaos.kernel()
    speed = {(r["case"], r["what"]) for r in doc["speed"]}
    for case in benchmark.CASES:
        assert (case, "AES-256-GCM encrypt") in speed
        for backend in benchmark.backends():
            for op in ("encrypt", "decrypt"):
                assert (case, f"chaos {op} ({benchmark.label(backend)})") in speed
        if chaos._native is not None:
            assert (case, "chaos encrypt (native, table)") in speed


def test_report_table_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a scan")
    rtdose = get_testdata_file("rtdose_1frame.dcm", download=False)
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert main(["cipher-report", str(ct), str(junk), str(rtdose)]) == 1
    captured = capsys.readouterr()
    assert "NPCR" in captured.out and "CT_small.dcm" in captured.out and "S-boxes" in captured.out
    assert "Speed per backend" in captured.out and "AES-256-GCM encrypt" in captured.out
    assert "scanfort: error: notes.txt" in captured.err
    assert "scanfort: error: rtdose_1frame.dcm: 32-bit pixels" in captured.err


def test_bench_prints_ratios_against_aes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--min-time", "0.05"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    whats = {r["what"] for r in rows}
    assert "AES-256-GCM encrypt" in whats and "chaos encrypt (numpy)" in whats
    assert all(r["mb_s"] > 0 and r["vs_aes"] > 0 for r in rows)
    backends = benchmark.backends()
    for case in benchmark.CASES:
        for op in ("encrypt", "decrypt"):
            kernels = {r["kernel"] for r in rows if r["case"] == case and r["what"].startswith(f"chaos {op}")}
            assert {chaos.kernel(b) for b in backends} <= kernels
    if chaos._native is not None:  # the native table kernel is always measured
        assert "chaos encrypt (native, table)" in whats and "chaos decrypt (native, table)" in whats
        assert ("native GFNI/AVX-512" in kernels) == bool(chaos._native.GFNI)
    # one fresh process per backend; the native (or numpy) one never loads numba
    rss = {r["backend"]: r for r in doc["peak_rss"]}
    assert set(rss) == set(backends)
    assert all(r["peak_rss_bytes"] > 10_000_000 for r in rss.values())
    assert rss["numpy"]["numba_loaded"] is False
    if "native" in rss:
        assert rss["native"]["numba_loaded"] is False and rss["native"]["kernel"].startswith("native")
    if "numba" in rss:
        assert rss["numba"]["numba_loaded"] is True
