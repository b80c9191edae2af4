"""Settle detection (injected clock and stat), file filters, the DICOM completeness walker."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from agent.config import FolderConfig
from agent.dicomcheck import Truncated, check_complete
from agent.dispatch import Backoff
from agent.watch import Settler, walk, wanted
from tests.test_agent_helpers import ct_slice


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeStat:
    """size/mtime per path, as a filesystem view the test controls."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}

    def __call__(self, path: str) -> os.stat_result:
        if path not in self.files:
            raise FileNotFoundError(path)
        size, mtime = self.files[path]
        fields = [0] * 19
        fields[0], fields[6], fields[14] = 0o100644, size, mtime  # mode, size, mtime_ns
        return os.stat_result(fields)


def test_settler_waits_for_size_and_mtime_to_stay_unchanged() -> None:
    clock, stat = FakeClock(), FakeStat()
    settler = Settler(5.0, clock=clock, stat=stat)
    stat.files["/in/a"] = (100, 1)
    assert settler.offer("/in/a", 0)
    assert not settler.offer("/in/a", 0)  # already a candidate
    assert settler.poll() == []
    clock.now += 4
    stat.files["/in/a"] = (200, 2)  # still growing: the settle time starts again
    assert settler.poll() == []
    clock.now += 4.9
    assert settler.poll() == []
    clock.now += 0.2
    [ready] = settler.poll()
    assert (ready.path, ready.size, ready.mtime_ns) == ("/in/a", 200, 2)
    assert len(settler) == 0


def test_settler_drops_empty_and_vanished_files_and_honours_delay() -> None:
    clock, stat = FakeClock(), FakeStat()
    settler = Settler(1.0, clock=clock, stat=stat)
    stat.files["/in/empty"] = (0, 1)
    settler.offer("/in/empty", 0)
    settler.offer("/in/gone", 0)
    stat.files["/in/later"] = (10, 1)
    settler.offer("/in/later", 0, delay=10)
    settler.poll()
    clock.now += 2
    assert settler.poll() == []
    assert "/in/empty" not in settler and "/in/gone" not in settler
    assert "/in/later" in settler
    clock.now += 9
    settler.poll()
    clock.now += 1.5
    assert [s.path for s in settler.poll()] == ["/in/later"]


def test_filters(tmp_path: Path) -> None:
    folder = FolderConfig(path=tmp_path, destinations=("x",), include=("*.dcm", "CT*"),
                          exclude=("*skip*",), recursive=False)
    assert wanted(folder, str(tmp_path / "a.dcm"))
    assert wanted(folder, str(tmp_path / "CT0001"))
    assert not wanted(folder, str(tmp_path / "a.txt"))
    assert not wanted(folder, str(tmp_path / "skipme.dcm"))
    assert not wanted(folder, str(tmp_path / "a.dcm.partial"))
    assert not wanted(folder, str(tmp_path / "a.tmp"))
    assert not wanted(folder, str(tmp_path / ".a.dcm"))
    assert not wanted(folder, str(tmp_path / "sub" / "a.dcm"))  # not recursive
    assert not wanted(folder, str(tmp_path.parent / "a.dcm"))
    rec = FolderConfig(path=tmp_path, destinations=("x",))
    assert wanted(rec, str(tmp_path / "sub" / "a.dcm"))
    assert not wanted(rec, str(tmp_path / ".hidden" / "a.dcm"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"1")
    (tmp_path / "c").write_bytes(b"1")
    (tmp_path / "c.partial").write_bytes(b"1")
    assert sorted(walk(rec)) == [str(tmp_path / "c"), str(tmp_path / "sub" / "b")]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_dicom_walker_accepts_complete_and_rejects_cut_files(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    check_complete(io.BytesIO(data))
    for cut in (len(data) - 1, len(data) - 100, len(data) // 2 + 3):
        with pytest.raises(Truncated):
            check_complete(io.BytesIO(data[:cut]))


def test_dicom_walker_on_synthetic_slice() -> None:
    data = ct_slice()
    check_complete(io.BytesIO(data))
    with pytest.raises(Truncated):
        check_complete(io.BytesIO(data[:-2]))


def test_backoff_doubles_with_jitter_and_caps() -> None:
    import random

    b = Backoff(5.0, 3600.0, random.Random(1))
    for attempts, base in ((0, 5), (1, 10), (2, 20), (5, 160), (20, 3600)):
        delays = [b.delay(attempts) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jitter
