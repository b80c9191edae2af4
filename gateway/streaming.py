"""A response body produced by a worker thread one batch ahead of the client.

Starlette runs a plain iterator body with one thread hop per chunk, and only after the
previous chunk was handed to the server: the thread that reads and restores instances
waits while a chunk is written, and a batch of parts must be joined into one chunk (one
more copy of every byte) to keep the hops few. :func:`ahead` takes *batches* (sequences
of pieces): while the pieces of one batch are written, each as it is, the next batch is
produced in a worker thread. At most one batch waits beyond the one being written, so
memory stays bounded by what the producer holds plus one batch.

The producer is closed (its ``finally`` blocks run) in a worker thread once it is done or
the client went away, never while it is still running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Sequence

import anyio
import anyio.to_thread

Piece = bytes | memoryview


async def ahead(batches: Generator[Sequence[Piece], None, None]) -> AsyncIterator[Piece]:
    """The pieces of ``batches``, the next batch produced while these are written."""

    def step() -> Sequence[Piece] | None:
        return next(batches, None)

    task: asyncio.Task[Sequence[Piece] | None] = asyncio.ensure_future(
        anyio.to_thread.run_sync(step))  # fmt: skip
    try:
        while True:
            batch = await asyncio.shield(task)
            if batch is None:
                return
            task = asyncio.ensure_future(anyio.to_thread.run_sync(step))
            for piece in batch:
                yield piece
    finally:
        # the producer may be running in its thread: let it finish, then close it there
        with anyio.CancelScope(shield=True):
            if not task.done():
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: an error after the client left is not logged
            await anyio.to_thread.run_sync(batches.close)
