"""A response body produced by a thread of its own, a few batches ahead of the client.

Starlette runs a plain iterator body with one thread hop per chunk, and only after the
previous chunk was handed to the server: the thread that reads and restores instances
waits while a chunk is written, and a batch of parts must be joined into one chunk (one
more copy of every byte) to keep the hops few. :func:`ahead` takes *batches* (sequences
of pieces) from a producer that runs in a worker thread for the whole response: it
produces the next batches while the pieces of one are written, each as it is, and hands
each over to the event loop as soon as it is ready, up to ``depth`` batches beyond the
one being written — so memory stays bounded by what the producer holds plus ``depth + 1``
batches, and the producer never waits for the event loop to ask for its next batch.

The producer is closed (its ``finally`` blocks run) in its own thread once it is done or
the client went away, never while it is still running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Generator, Sequence

import anyio
import anyio.to_thread

Piece = bytes | memoryview

#: Batches produced ahead of the one being written.
DEPTH = 2


async def ahead(batches: Generator[Sequence[Piece], None, None],
                depth: int = DEPTH) -> AsyncGenerator[Piece, None]:  # fmt: skip
    """The pieces of ``batches``, the next ones produced while these are written."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[tuple[Sequence[Piece] | None, BaseException | None]] = asyncio.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def hand_over(batch: Sequence[Piece] | None, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(ready.put_nowait, (batch, error))
        except RuntimeError:  # the event loop is gone (shutdown): nobody to hand it to
            stop.set()

    def produce() -> None:
        try:
            while True:
                room.acquire()
                if stop.is_set():
                    return
                batch = next(batches, None)
                hand_over(batch, None)
                if batch is None:
                    return
        except BaseException as exc:  # raised where the batches are taken, in order
            hand_over(None, exc)
        finally:
            batches.close()  # here: the generator is never run by two threads

    producer = asyncio.ensure_future(anyio.to_thread.run_sync(produce))
    try:
        while True:
            batch, error = await ready.get()
            room.release()
            if error is not None:
                raise error
            if batch is None:
                return
            for piece in batch:
                yield piece
    finally:
        # the producer may be running in its thread: stop it, let it finish and close there
        stop.set()
        room.release()  # if it waits for room
        with anyio.CancelScope(shield=True):
            if not producer.done():
                await asyncio.wait([producer])
            if not producer.cancelled():
                producer.exception()  # retrieved: an error after the client left is not logged
