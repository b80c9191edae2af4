"""A time limit on cipher calls: a stuck protection must not stall the agent forever.

A protect thread that runs far longer than its input needs (a bug in the cipher, say a
loop that never ends for one unlucky key) is interrupted with an asynchronous exception
(CPython's ``PyThreadState_SetAsyncExc``), delivered at the thread's next bytecode. The
file then stays ``discovered`` in the journal and is protected again with a fresh key.
This only interrupts Python-level code; a single native call that never returns is caught
by the runner's health check instead (no tick, so the service manager restarts the agent).

The exception is only ever raised while the thread is inside :meth:`CipherGuard.call`, and
:meth:`call` converts it, so it cannot surface anywhere else.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class CipherTimeout(Exception):
    """A cipher call exceeded its time limit and was interrupted."""


class _Interrupt(BaseException):
    """Raised inside the stuck thread; BaseException so that cipher code does not eat it."""


class CipherGuard:
    def __init__(self, base_s: float = 10.0, bytes_per_s: float = 5e6,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_s, self.bytes_per_s, self.clock = base_s, bytes_per_s, clock
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}
        self._fired: set[int] = set()
        self.interrupted = 0

    def limit(self, size: int) -> float:
        return self.base_s + size / self.bytes_per_s

    def call(self, size: int, fn: Callable[[], T]) -> T:
        """Run ``fn``; raise :class:`CipherTimeout` if it exceeded the limit for ``size``."""
        tid = threading.get_ident()
        with self._lock:
            self._fired.discard(tid)
            self._deadlines[tid] = self.clock() + self.limit(size)
        try:
            try:
                return fn()
            finally:
                with self._lock:
                    self._deadlines.pop(tid, None)
        except BaseException:
            # The interrupt may come back wrapped (the age library calls back into Python
            # and re-raises its own error): whatever is raised after an interrupt is the
            # timeout.
            with self._lock:
                fired = tid in self._fired
                self._fired.discard(tid)
            if fired:
                raise CipherTimeout(f"cipher call exceeded {self.limit(size):.0f}s") from None
            raise

    def check(self) -> int:
        """Interrupt every call past its deadline; return how many were interrupted."""
        now = self.clock()
        n = 0
        with self._lock:  # the target cannot leave call() while we hold the lock
            for tid, deadline in list(self._deadlines.items()):
                if now > deadline:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                               ctypes.py_object(_Interrupt))
                    del self._deadlines[tid]  # one interrupt per call
                    self._fired.add(tid)
                    n += 1
        self.interrupted += n
        return n
