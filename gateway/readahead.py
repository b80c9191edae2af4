"""An archive's multipart answer read ahead of the client, in a thread of its own.

A series retrieve has three stages that can overlap: reading the archive's answer, restoring
instances (on the restore pool) and sending them. When one thread both reads the archive
and hands parts to the server, the read stops whenever that thread waits for a restore, an
audit transaction or the client, and the retrieve takes the *sum* of those times.
:class:`ReadAhead` reads the answer in a thread of its own, so the archive is read while
earlier parts are restored, audited and sent, up to a bound in instances and in bytes.

A large instance that is read from the archive's stream as it is sent (``hold``) stops the
reader until the consumer :meth:`ReadAhead.release`\\ s it: the next part cannot be read
before this one's bytes are.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import BinaryIO, Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """The items ``take`` makes of each stream of ``streams``, in order, read by a thread
    at most ``count`` items and ``limit`` bytes ahead of :meth:`get`.

    ``take(stream) -> (item, size, hold)``: ``size`` counts against ``limit`` until the
    item is got; ``hold``: read no further until :meth:`release`. ``discard(item)`` is
    called for every item never got (after :meth:`close`). An exception of the reader is
    raised by :meth:`get` once the items before it were got. ``hold``: the item before
    the first of ``streams`` (taken by the caller) holds the reader.
    """

    def __init__(self, streams: Generator[BinaryIO, None, None],
                 take: Callable[[BinaryIO], tuple[T, int, bool]], discard: Callable[[T], None],
                 *, count: int, limit: int, hold: bool = False) -> None:  # fmt: skip
        self._streams = streams
        self._take = take
        self._discard = discard
        self._count = count
        self._limit = limit
        self._cond = threading.Condition()
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0
        self._hold = hold
        self._error: BaseException | None = None
        self._ended = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="gw-readahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stop and (self._hold or len(self._items) >= self._count
                                              or self._bytes >= self._limit):  # fmt: skip
                        self._cond.wait()
                    if self._stop:
                        return
                stream = next(self._streams, None)
                if stream is None:
                    return
                item, size, hold = self._take(stream)
                with self._cond:
                    if self._stop:
                        self._discard(item)
                        return
                    self._items.append((item, size))
                    self._bytes += size
                    self._hold = hold
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, in order
            with self._cond:
                self._error = exc
        finally:
            self._streams.close()  # here: the generator is never run by two threads
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def peek(self) -> tuple[bool, T | None]:
        """(True, the next item) when one was read, without waiting; (False, None) else."""
        with self._cond:
            if self._items:
                return True, self._items[0][0]
            return False, None

    def get(self) -> tuple[bool, T | None]:
        """(True, the next item), waiting for it; (False, None) after the last one."""
        with self._cond:
            while not self._items and not self._ended:
                self._cond.wait()
            if self._items:
                item, size = self._items.popleft()
                self._bytes -= size
                self._cond.notify_all()
                return True, item
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return False, None

    def release(self) -> None:
        """The held item was consumed: read on."""
        with self._cond:
            self._hold = False
            self._cond.notify_all()

    def close(self) -> None:
        """Stop reading (the reader closes the streams once its current read returns) and
        discard what was read and not got."""
        with self._cond:
            self._stop = True
            left = [item for item, _ in self._items]
            self._items.clear()
            self._cond.notify_all()
        for item in left:
            self._discard(item)
