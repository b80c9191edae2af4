"""Running the central service: in the foreground (CLI) or in a background thread (demo, tests)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from service.app import create_app
from service.settings import Settings


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8600,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted (what ``scanfort central run`` does)."""
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level=log_level,
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        server_header=False,
        # stop within seconds even if a client holds a connection (e.g. a stuck TLS handshake)
        timeout_graceful_shutdown=5,
    )


class BackgroundServer:
    """The central service on ``host:port`` in a daemon thread; port 0 picks a free one.

    >>> with BackgroundServer(settings) as server:   # doctest: +SKIP
    ...     requests.get(server.url + "/healthz")
    """

    def __init__(
        self, settings: Settings, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self.settings = settings
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="on", server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="scanfort-central",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("central service did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
        self.app.state.scanfort.store.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
