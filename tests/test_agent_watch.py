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
from agent.watch import Reconciler, Settler, walk, wanted
from tests.helpers import ct_slice


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
    assert settler.offer("/in/a", "/in")
    assert not settler.offer("/in/a", "/in")  # already a candidate
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
    settler.offer("/in/empty", "/in")
    settler.offer("/in/gone", "/in")
    stat.files["/in/later"] = (10, 1)
    settler.offer("/in/later", "/in", delay=10)
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


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "rtdose.dcm", "rtplan.dcm", "image_dfl.dcm",
                                  "waveform_ecg.dcm"])
def test_dicom_walker_decides_image_like_the_cipher(name: str) -> None:
    """The agent takes the walk's top-level tags as the ``auto`` decision instead of a
    pydicom parse; on every file it can tell, it must agree with the cipher's own check."""
    import cipher

    data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
    walked = check_complete(io.BytesIO(data))
    expected = cipher.is_dicom_with_pixels(io.BytesIO(data))
    if name == "image_dfl.dcm":
        assert walked.image is None  # deflated: not walked, the cipher decides
    else:
        assert walked.image is expected
    assert expected is (name not in ("rtplan.dcm", "waveform_ecg.dcm"))


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


def test_reconcile_lists_only_changed_directories_and_finds_a_late_file(tmp_path: Path) -> None:
    """Idle cost independent of the archive: unchanged study folders cost one stat each;
    a file written into an old study folder is still found on the next pass."""
    clock = [0.0]
    folder = FolderConfig(path=tmp_path, destinations=("x",))
    for study in range(5):
        (tmp_path / f"study{study}").mkdir()
        for i in range(3):
            (tmp_path / f"study{study}" / f"{i}.dcm").write_bytes(b"x")
    old = 1_000_000_000
    for d in [tmp_path, *tmp_path.iterdir()]:
        os.utime(d, ns=(old * 10**9, old * 10**9))
    clock[0] = old + 3600
    rec = Reconciler(folder, clock=lambda: clock[0], full_share=0.0)
    assert len(list(rec.changed_files())) == 15 and rec.listed == 6
    assert list(rec.changed_files()) == [] and rec.listed == 0  # nothing changed
    late = tmp_path / "study3" / "late.dcm"
    late.write_bytes(b"y")  # the watcher missed it
    assert str(late) in rec.changed_files()  # only its folder is listed again ...
    assert rec.listed == 1
    os.utime(late.parent, ns=(old * 10**9, (old + 60) * 10**9))
    list(rec.changed_files())  # ... until it is old enough to be trusted
    assert list(rec.changed_files()) == [] and rec.listed == 0


def test_reconcile_slow_full_pass_lists_everything_in_turn(tmp_path: Path) -> None:
    folder = FolderConfig(path=tmp_path, destinations=("x",))
    for study in range(9):
        (tmp_path / f"s{study}").mkdir()
    old = 1_000_000_000
    for d in [tmp_path, *tmp_path.iterdir()]:
        os.utime(d, ns=(old * 10**9, old * 10**9))
    rec = Reconciler(folder, clock=lambda: old + 3600.0, full_share=0.2)
    list(rec.changed_files())
    listed = [len(list(rec.changed_files())) + rec.listed for _ in range(5)]
    assert listed == [2, 2, 2, 2, 2]  # 10 directories, a fifth each pass


def test_walk_does_not_follow_links_unless_asked(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "link.bin").symlink_to(outside)
    (inbox / "real.bin").write_bytes(b"x")
    assert [os.path.basename(p) for p in walk(FolderConfig(path=inbox, destinations=("x",)))] \
        == ["real.bin"]
    follow = FolderConfig(path=inbox, destinations=("x",), follow_symlinks=True)
    assert sorted(os.path.basename(p) for p in walk(follow)) == ["link.bin", "real.bin"]
