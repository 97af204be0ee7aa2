"""A ``bgad serve`` process on a free local port, for the serving benchmarks (serve_load.py, serve_memory.py)."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_server(run: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start ``bgad serve --run RUN``, wait until /health answers, yield (process, base URL); stop it with Ctrl-C."""
    port = _free_port()
    command = [sys.executable, "-m", "bgad", "serve", "--run", str(run), "--port", str(port), "--quiet"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield server, url
    finally:
        os.kill(server.pid, signal.SIGINT)
        server.wait(timeout=30)
