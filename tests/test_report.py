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
    assert doc["kernel"] == chaos.kernel() and doc["constant_time"] == chaos.constant_time(chaos.kernel())
    speed = {(r["case"], r["what"], r["kernel"]) for r in doc["speed"]}
    for case in benchmark.CASES:
        assert (case, "AES-256-GCM encrypt", "") in speed
        for kernel in benchmark.kernels():  # every kernel this CPU runs, the reference too
            for op in ("encrypt", "decrypt"):
                assert (case, f"chaos {op}", kernel) in speed


def test_report_table_and_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a scan")
    rtdose = get_testdata_file("rtdose_1frame.dcm", download=False)
    ct = get_testdata_file("CT_small.dcm", download=False)
    assert main(["cipher-report", str(ct), str(junk), str(rtdose)]) == 1
    captured = capsys.readouterr()
    assert "NPCR" in captured.out and "CT_small.dcm" in captured.out and "S-boxes" in captured.out
    assert "Speed per kernel" in captured.out and "AES-256-GCM encrypt" in captured.out
    assert f"(kernel: {chaos.kernel()}, " in captured.out
    assert "scanfort: error: notes.txt" in captured.err
    assert "scanfort: error: rtdose_1frame.dcm: 32-bit pixels" in captured.err


def test_bench_prints_ratios_against_aes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--min-time", "0.05"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # progress never mixes into the JSON
    assert captured.err.splitlines()[0] == f"scanfort: bench: {len(benchmark.CASES) + 1} steps to do"
    rows = doc["rows"]
    assert doc["kernel"] == chaos.kernel() and doc["cpu"] == benchmark.cpu_model() != ""
    assert all(r["mb_s"] > 0 and r["vs_aes"] > 0 for r in rows)
    for case in benchmark.CASES:
        aes = [r for r in rows if r["case"] == case and r["what"] == "AES-256-GCM encrypt"]
        assert len(aes) == 1 and aes[0]["vs_aes"] == 1.0
        for op in ("encrypt", "decrypt"):
            kernels = [r["kernel"] for r in rows if r["case"] == case and r["what"] == f"chaos {op}"]
            assert kernels == benchmark.kernels() == list(chaos.kernels())
    assert {r["kernel"]: r["constant_time"] for r in rows if r["kernel"]} == {k: chaos.constant_time(k) for k in chaos.kernels()}
    # every target of the issue whose kernel this CPU has is printed beside its figure
    targets = {(t["target"], t["kernel"]) for t in doc["targets"]}
    if "table" in chaos.kernels():
        assert ("radiograph encrypt table <= README before (18.7 ms, Xeon)", "table") in targets
    for k in set(benchmark.AES_KERNELS) & set(chaos.kernels()):
        assert ("radiograph encrypt >= 0.5x AES-256-GCM (AES-NI kernel)", k) in targets
        assert ("CT slice encrypt <= 0.4 ms incl. setup", k) in targets
    # fresh processes: the process's kernel and the reference; neither loads a JIT
    rss = {r["run"]: r for r in doc["peak_rss"]}
    assert set(rss) == {"default", chaos.REFERENCE}
    assert all(r["peak_rss_bytes"] > 10_000_000 and r["jit_loaded"] is False for r in rss.values())
    assert rss["default"]["kernel"] == chaos.kernel()


def test_bench_table_names_cpu_kernel_and_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--min-time", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"CPU: {benchmark.cpu_model()}; chaos.encrypt runs the {chaos.kernel()} kernel")
    assert "targets (issue 13) beside the measured figures:" in out
    assert "reference*" in out  # the numpy reference is marked as not constant time
