"""The dashboard's HTTP side: a small asyncio HTTP/1.1 server on the poller's own event loop.

One thread runs one event loop with both the poller (once per ``poll_interval_ms``) and the
server, so a sample is pushed to every watching browser the moment it is taken, with no lock
and no thread per client. Routes (GET or HEAD; any other method is 405):

- ``/`` the page, ``/static/app.js`` its script and ``/static/chart.js`` the canvas line
  chart the page draws with (plain JS, no build step, nothing loaded from elsewhere);
- ``/api/state`` the latest sample of :class:`~hftgate.dashboard.poller.Poller` as JSON (503
  with a JSON message until the first poll finished);
- ``/api/events`` server-sent events: first ``history`` (the charted points kept, at most
  ``HISTORY_POINTS``), then one ``state`` per sample. A client that cannot take a sample within
  ``SLOW_CLIENT_S`` is disconnected (the browser reconnects on its own), so a stalled browser
  costs at most one sample of buffer.

Only requests whose ``Host`` is the bound address (or ``localhost`` on its port) are answered
(403 otherwise), so a web page elsewhere cannot read the suite through DNS rebinding. Bounded:
request heads (``MAX_REQUEST_HEAD_BYTES``, 431 beyond), connections (``MAX_CONNECTIONS``) and
event streams (``MAX_EVENT_STREAMS``, 503 beyond, saying so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections import deque
from http import HTTPStatus
from importlib import resources
from typing import Any

from hftgate.aioloops import new_thread_loop
from hftgate.dashboard.poller import DashboardConfig, Poller

log = logging.getLogger(__name__)

#: Files served from the package's ``static/`` folder: request path -> (file, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
}
#: Charted points kept for a browser that connects (at one poll a second: five minutes).
HISTORY_POINTS = 300
#: Largest request line plus headers accepted.
MAX_REQUEST_HEAD_BYTES = 8_192
#: Seconds a client has to send its request head.
REQUEST_TIMEOUT_S = 10.0
#: Open connections at once (event streams included); beyond it a new one is closed at once.
MAX_CONNECTIONS = 64
#: Event streams at once.
MAX_EVENT_STREAMS = 16
#: Seconds a sample may wait in an event stream's send buffer before the client is dropped.
SLOW_CLIENT_S = 5.0
#: A comment line is sent on an idle event stream this often, so proxies keep it open.
KEEPALIVE_S = 15.0
#: Browser reconnect delay announced on each event stream (the ``retry`` field), in ms.
RECONNECT_MS = 2_000

# The page loads only its own files and talks only to its own origin.
_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
)


class DashboardPageMissing(RuntimeError):
    """The installed package lacks one of the page's files (package data not installed)."""


def static_files() -> dict[str, bytes]:
    """The page's files, by name, from the package's ``static/`` folder."""
    folder = resources.files("hftgate.dashboard").joinpath("static")
    files = {}
    for name in sorted({name for name, _ in STATIC_FILES.values()}):
        try:
            files[name] = folder.joinpath(name).read_bytes()
        except FileNotFoundError:
            raise DashboardPageMissing(
                f"hftgate/dashboard/static/{name} is not installed with the package "
                "(package data missing from this install)"
            ) from None
    return files


def page_html() -> bytes:
    """The dashboard page, from the package's ``static/index.html``."""
    return static_files()["index.html"]


def _head(status: HTTPStatus, content_type: str, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in _SECURITY_HEADERS]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Dashboard:
    """The running dashboard: ``start()`` starts polling (and serving, unless ``serve_http`` is
    False: then it only samples, for :meth:`latest`), ``stop()`` ends both."""

    def __init__(self, config: DashboardConfig, poller: Poller, *, serve_http: bool = True) -> None:
        self.config = config
        self._poller = poller
        self._files = static_files()  # before binding: a broken install fails without holding the port
        self._socket: socket.socket | None = None
        if serve_http:
            # Bound here, not in the thread, so a port in use is this call's error.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((config.http_host, config.http_port))
                sock.listen(128)
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            self._socket = sock
        port = self.port
        self._allowed_hosts = frozenset(
            {f"{config.http_host}:{port}", f"localhost:{port}"}
            | ({config.http_host, "localhost"} if port == 80 else set())
        )
        #: The latest sample, JSON-encoded; None until the first poll finished.
        self._state: bytes | None = None
        self._latest: dict[str, Any] | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self._sample_ready: asyncio.Event | None = None
        self._connections = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._event_streams = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1]) if self._socket is not None else 0

    @property
    def url(self) -> str:
        return f"http://{self.config.http_host}:{self.port}/"

    @property
    def event_streams(self) -> int:
        """Event streams open now."""
        return self._event_streams

    def latest(self) -> dict[str, Any] | None:
        """The latest sample (None before the first poll finished); do not change it."""
        return self._latest

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="dashboard", daemon=True)]
        self._threads[0].start()

    def _run(self) -> None:
        loop = new_thread_loop()  # beside the demo flow's: see hftgate.aioloops
        main = loop.create_task(self._serve())
        with self._lock:
            self._loop, self._main = loop, main
            stopping = self._stopping
        if stopping:
            main.cancel()
        try:
            loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(self._poller.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._sample_ready = asyncio.Event()
        server = None
        if self._socket is not None:
            server = await asyncio.start_server(self._handle, sock=self._socket, limit=MAX_REQUEST_HEAD_BYTES)
        try:
            await self._poll_loop()
        finally:
            if server is not None:
                server.close()
                handlers = list(self._handlers)
                for handler in handlers:
                    handler.cancel()
                await asyncio.gather(*handlers, return_exceptions=True)

    async def _poll_loop(self) -> None:
        interval_s = self.config.poll_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                state = await self._poller.poll()
                self._publish(state)
            except Exception:  # a bug in one poll must not end the dashboard
                log.exception("dashboard poll failed")
            await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))

    def _publish(self, state: dict[str, Any]) -> None:
        self._state = json.dumps(state).encode()
        self._latest = state
        self._history.append(state["series"])
        assert self._sample_ready is not None
        ready, self._sample_ready = self._sample_ready, asyncio.Event()
        ready.set()

    def stop(self) -> None:
        """Stop serving and polling (a poll in flight is cancelled) and close the channels."""
        with self._lock:
            self._stopping = True
            loop, main = self._loop, self._main
        if loop is not None and main is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(main.cancel)
        for thread in self._threads:
            thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()

    # --- HTTP -------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or never finished its request
        except asyncio.CancelledError:
            pass  # the dashboard is stopping (only it cancels handlers): end quietly
        finally:
            self._connections -= 1
            self._handlers.discard(task)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._json(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._json(writer, HTTPStatus.BAD_REQUEST, "malformed request line")
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await self._json(writer, HTTPStatus.METHOD_NOT_ALLOWED, f"method {method[:20]} not allowed")
            return
        host = headers.get("host", "")
        if host not in self._allowed_hosts:  # DNS rebinding: another site's page reading the suite
            await self._json(writer, HTTPStatus.FORBIDDEN, f"host {host[:100]!r} not allowed", head_only)
            return
        path = target.split("?", 1)[0]
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            await self._send(writer, HTTPStatus.OK, self._files[name], content_type, head_only)
        elif path == "/api/state":
            if self._state is None:
                await self._json(
                    writer, HTTPStatus.SERVICE_UNAVAILABLE, "first poll of the suite not finished", head_only
                )
            else:
                await self._send(writer, HTTPStatus.OK, self._state, "application/json", head_only)
        elif path == "/api/events" and not head_only:
            await self._event_stream(writer)
        else:
            await self._json(writer, HTTPStatus.NOT_FOUND, f"no such path: {path[:100]}", head_only)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        head_only: bool = False,
    ) -> None:
        writer.write(_head(status, content_type, len(body)) + (b"" if head_only else body))
        await asyncio.wait_for(writer.drain(), SLOW_CLIENT_S)

    async def _json(
        self, writer: asyncio.StreamWriter, status: HTTPStatus, error: str, head_only: bool = False
    ) -> None:
        await self._send(writer, status, json.dumps({"error": error}).encode(), "application/json", head_only)

    async def _event_stream(self, writer: asyncio.StreamWriter) -> None:
        if self._event_streams >= MAX_EVENT_STREAMS:
            await self._json(
                writer,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many event streams (at most {MAX_EVENT_STREAMS})",
            )
            return
        self._event_streams += 1
        try:
            history = json.dumps(list(self._history)).encode()
            writer.write(_head(HTTPStatus.OK, "text/event-stream", None))
            writer.write(b"retry: %d\n\nevent: history\ndata: %s\n\n" % (RECONNECT_MS, history))
            if self._state is not None:
                writer.write(b"event: state\ndata: %s\n\n" % self._state)
            await asyncio.wait_for(writer.drain(), SLOW_CLIENT_S)
            while True:
                ready = self._sample_ready
                assert ready is not None
                try:
                    await asyncio.wait_for(ready.wait(), KEEPALIVE_S)
                except TimeoutError:
                    writer.write(b": keepalive\n\n")
                else:
                    writer.write(b"event: state\ndata: %s\n\n" % self._state)
                if writer.is_closing():
                    return
                await asyncio.wait_for(writer.drain(), SLOW_CLIENT_S)
        finally:
            self._event_streams -= 1
