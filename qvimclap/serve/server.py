"""Running the app: bind the socket first (a busy port is a one-line error, ``port=0`` picks a free one),
then uvicorn; :func:`running` serves in a background thread for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qvimclap.errors import MissingDependencyError, QvimclapError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; raises QvimclapError when it cannot be had."""
    if not 0 <= port <= 65535:
        raise QvimclapError(f"--port {port}: a TCP port is 0 to 65535 (0 picks a free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise QvimclapError(
            f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def make_server(app: Any, *, log_level: str = "warning") -> Any:
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError('qvimclap serve needs uvicorn: pip install -e ".[serve]"') from None
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


def serve_forever(app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C)."""
    make_server(app, log_level=log_level).run(sockets=[sock])


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in a daemon thread on ``host:port`` (a free port by default); yields the base URL and
    stops the server on exit."""
    sock = bind(host, port)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
