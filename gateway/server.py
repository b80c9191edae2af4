"""Running the gateway: in the foreground (CLI) or in a background thread (tests, bench)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from cipher import heap
from gateway.app import create_app
from gateway.config import Settings

#: The C heap keeps the pages of restored instances for the next ones (:mod:`cipher.heap`):
#: buffers under 8 MiB (a slice, a small multi-frame) come from the heap, and a heap's free
#: top goes back to the system only above 64 MiB (per thread arena). Measured on a 2-core
#: VM, a series retrieve went from about 110 page faults per 512×512 slice to 4 and from
#: about 365 to 405 MB/s; 512 MiB measured the same, with a higher peak.
HEAP_MMAP_THRESHOLD = 8 << 20
HEAP_TRIM_THRESHOLD = 64 << 20


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8700,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted (what ``scanfort gateway run`` does)."""
    heap.keep_pages(HEAP_MMAP_THRESHOLD, HEAP_TRIM_THRESHOLD)
    app = create_app(settings)
    uvicorn.run(
        app, host=host, port=port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        log_level=log_level, proxy_headers=True, forwarded_allow_ips="127.0.0.1",
        server_header=False, timeout_graceful_shutdown=5,
        access_log=False,  # QIDO query strings carry patient IDs and names: never logged
    )  # fmt: skip


class BackgroundServer:
    """The gateway on ``host:port`` in a daemon thread; port 0 picks a free one."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", app: FastAPI | None = None,
                 **app_kwargs: Any) -> None:  # fmt: skip
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.app = app or create_app(settings, **app_kwargs)
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="off", server_header=False,
                                access_log=False)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="scanfort-gateway",
            daemon=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
        self.app.state.gateway.store.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()
