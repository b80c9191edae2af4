"""The archive read ahead in a thread of its own (gateway/readahead.py), and restored
instances kept in pieces (gateway/restore.py)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Generator
from typing import BinaryIO, cast

import anyio
import pytest

from gateway.readahead import ReadAhead
from gateway.restore import InstanceCache, Restored
from gateway.streaming import ahead


def _streams(n: int, log: list[int], fail_at: int = -1) -> Generator[BinaryIO, None, None]:
    try:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("archive stopped")
            log.append(i)
            yield cast(BinaryIO, io.BytesIO(bytes([i]) * 10))
    finally:
        log.append(-1)  # closed


def _take(stream: BinaryIO) -> tuple[int, int, bool]:
    data = stream.read()
    return data[0], len(data), False


def _wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def _all(reader: ReadAhead[int]) -> list[int]:
    out: list[int] = []
    while True:
        got, item = reader.get()
        if not got:
            return out
        assert item is not None
        out.append(item)


def test_items_come_in_order_and_the_streams_are_closed() -> None:
    log: list[int] = []
    reader = ReadAhead(_streams(50, log), _take, lambda item: None, count=4, limit=1000)
    assert _all(reader) == list(range(50))
    _wait_for(lambda: log[-1:] == [-1])


def test_the_reader_stays_within_its_count_and_byte_bounds() -> None:
    log: list[int] = []
    reader = ReadAhead(_streams(50, log), _take, lambda item: None, count=3, limit=1000)
    _wait_for(lambda: len(log) == 3)
    time.sleep(0.05)
    assert log == [0, 1, 2]  # three ahead, no more
    reader.get()
    _wait_for(lambda: len(log) == 4)
    reader.close()

    log2: list[int] = []
    reader = ReadAhead(_streams(50, log2), _take, lambda item: None, count=100, limit=25)
    _wait_for(lambda: len(log2) == 3)  # 10 bytes each: the third one reaches 25
    time.sleep(0.05)
    assert log2 == [0, 1, 2]
    reader.close()


def test_a_held_item_stops_the_reader_until_released() -> None:
    log: list[int] = []

    def take(stream: BinaryIO) -> tuple[int, int, bool]:
        item, size, _ = _take(stream)
        return item, size, item == 1  # the second one is read from the stream as sent

    reader = ReadAhead(_streams(5, log), take, lambda item: None, count=10, limit=1000)
    _wait_for(lambda: len(log) == 2)
    time.sleep(0.05)
    assert log == [0, 1]
    assert reader.get() == (True, 0)
    assert reader.get() == (True, 1)
    time.sleep(0.05)
    assert log == [0, 1]
    reader.release()
    assert _all(reader) == [2, 3, 4]


def test_hold_from_the_start_and_an_error_after_the_items_before_it() -> None:
    log: list[int] = []
    reader = ReadAhead(_streams(5, log, fail_at=3), _take, lambda item: None, count=10,
                       limit=1000, hold=True)  # fmt: skip
    time.sleep(0.05)
    assert log == []  # the caller's first item is still being sent
    reader.release()
    assert reader.get() == (True, 0)
    assert reader.get() == (True, 1)
    assert reader.get() == (True, 2)
    with pytest.raises(RuntimeError, match="archive stopped"):
        reader.get()
    assert reader.get() == (False, None)
    _wait_for(lambda: log[-1:] == [-1])


def test_close_discards_what_was_read_and_stops_the_reader() -> None:
    log: list[int] = []
    discarded: list[int] = []
    lock = threading.Lock()

    def discard(item: int) -> None:
        with lock:
            discarded.append(item)

    reader = ReadAhead(_streams(50, log), _take, discard, count=5, limit=1000)
    _wait_for(lambda: len(log) == 5)  # full: waiting for the consumer
    reader.close()
    _wait_for(lambda: log[-1:] == [-1])
    assert sorted(discarded) == [0, 1, 2, 3, 4]
    assert log == [0, 1, 2, 3, 4, -1]  # nothing read after the close


def test_a_restored_instance_in_pieces_joins_once_and_counts_its_length() -> None:
    body = memoryview(bytearray(b"\x01\x02" * 1000))
    item = Restored([b"head", body, b"tail"], True, "1.2", "1.2.3", "1.2.3.4")
    assert item.length == 4 + 2000 + 4
    assert item.pieces[1] is body  # written as it is
    data = item.data
    assert data == b"head" + bytes(body) + b"tail"
    assert item.data is data and item.pieces == (data,)  # joined once, then held instead
    cache = InstanceCache(1 << 20)
    cache.put(item)
    cache.put(Restored(b"x" * 100, False, "1.2", "1.2.3", "1.2.3.5"))
    assert cache.size == item.length + 100


# --------------------------------------------------------------------------- ahead


def _batches(n: int, log: list[object], fail_at: int = -1,
             ) -> Generator[list[bytes], None, None]:  # fmt: skip
    try:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("archive stopped")
            log.append(i)
            yield [bytes([i]), bytes([i]) * 3]
    finally:
        log.append(("closed", threading.current_thread() is threading.main_thread()))


def test_ahead_hands_over_batches_in_order_and_at_most_depth_ahead() -> None:
    log: list[object] = []
    got: list[bytes] = []

    async def consume() -> None:
        pieces = ahead(_batches(6, log), depth=2)
        got.append(bytes(await pieces.__anext__()))
        # the producer runs on while nothing is taken: the batch being written, and two
        for _ in range(500):
            if len(log) >= 3:
                break
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        assert log == [0, 1, 2]  # and no more
        async for piece in pieces:
            got.append(bytes(piece))

    anyio.run(consume)
    assert got == [p for i in range(6) for p in (bytes([i]), bytes([i]) * 3)]
    assert log[-1] == ("closed", False)  # closed in the producer's thread


def test_ahead_closes_the_producer_when_the_client_leaves_and_raises_its_error() -> None:
    log: list[object] = []

    async def leave_early() -> None:
        pieces = ahead(_batches(100, log), depth=2)
        await pieces.__anext__()
        await pieces.aclose()  # what the server does when the client went away

    anyio.run(leave_early)
    assert log[-1] == ("closed", False) and len(log) <= 1 + 3 + 1  # no more batches made
    log.clear()

    async def read_all() -> list[bytes]:
        return [bytes(piece) async for piece in ahead(_batches(5, log, fail_at=3))]

    with pytest.raises(RuntimeError, match="archive stopped"):
        anyio.run(read_all)
    assert log == [0, 1, 2, ("closed", False)]
