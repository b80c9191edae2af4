"""A protect worker whose first request anywhere never returns (a stuck cipher call).

Used by the fault tests as the agent's worker command: ``python stuck_worker.py MARKER``.
The first child to get a request creates MARKER and hangs; every later child (the agent
starts a new one after killing the stuck one) behaves like the real worker.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from agent import protect as worker

_MARKER = sys.argv[1]
_real_handle = worker.Protector.handle


def _handle(self: worker.Protector, req: dict[str, Any]) -> dict[str, Any]:
    if not os.path.exists(_MARKER):
        open(_MARKER, "w").close()
        while True:  # never answers
            time.sleep(1)
    return _real_handle(self, req)


worker.Protector.handle = _handle  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(worker.main())
