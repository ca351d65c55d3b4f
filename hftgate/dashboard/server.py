"""The dashboard's HTTP side: a standard-library server in a thread, fed by an asyncio poller.

Only requests whose ``Host`` is the bound address (or ``localhost`` on its port) are answered
(403 otherwise), so a web page elsewhere cannot read the suite through DNS rebinding.
``GET /`` serves the page (``static/index.html``, plain JS, no build step, no CDN), ``GET
/api/state`` the latest sample of :class:`~hftgate.dashboard.poller.Poller` as JSON (503 with a
JSON message until the first poll finished); anything else is 404, any method but GET/HEAD 405.
The poller runs on its own event loop in a second thread, once per ``poll_interval_ms``; the
HTTP threads only read the latest encoded sample, so a slow browser never delays a poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from hftgate.dashboard.poller import DashboardConfig, Poller

log = logging.getLogger(__name__)


class DashboardPageMissing(RuntimeError):
    """The installed package lacks ``static/index.html`` (package data not installed)."""


def page_html() -> bytes:
    """The dashboard page, from the package's ``static/index.html``."""
    try:
        return resources.files("hftgate.dashboard").joinpath("static/index.html").read_bytes()
    except FileNotFoundError:
        raise DashboardPageMissing(
            "hftgate/dashboard/static/index.html is not installed with the package "
            "(package data missing from this install)"
        ) from None


class _Handler(BaseHTTPRequestHandler):
    server: _DashboardHttpServer
    #: Seconds a connection may stay silent before it is closed (a stalled client holds a thread).
    timeout = 10

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        host = self.headers.get("Host", "")
        if host not in self.server.allowed_hosts:  # DNS rebinding: another site's page reading the suite
            self._json(HTTPStatus.FORBIDDEN, {"error": f"host {host[:100]!r} not allowed"})
            return
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            state = self.server.state
            if state is None:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "first poll of the suite not finished"})
            else:
                self._send(HTTPStatus.OK, state, "application/json")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path: {path[:100]}"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _DashboardHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    #: The latest sample, JSON-encoded; None until the first poll finished.
    state: bytes | None = None
    page: bytes = b""
    #: Host headers served (the address the dashboard is bound to, by IP or as localhost).
    allowed_hosts: frozenset[str] = frozenset()


class Dashboard:
    """The running dashboard: ``start()`` binds and starts polling, ``stop()`` ends both."""

    def __init__(self, config: DashboardConfig, poller: Poller) -> None:
        self.config = config
        self._poller = poller
        page = page_html()  # before binding: a broken install fails without holding the port
        self._http = _DashboardHttpServer((config.http_host, config.http_port), _Handler)
        self._http.page = page
        self._http.allowed_hosts = frozenset(
            {f"{config.http_host}:{self.port}", f"localhost:{self.port}"}
            | ({f"{config.http_host}", "localhost"} if self.port == 80 else set())
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._cancel_poll: Callable[[], object] | None = None
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.http_host}:{self.port}/"

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="dashboard-http", daemon=True),
            threading.Thread(target=self._run_poller, name="dashboard-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _run_poller(self) -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(self._poll_loop())
        with self._lock:
            self._cancel_poll = lambda: loop.call_soon_threadsafe(task.cancel)
            stopping = self._stop.is_set()
        if stopping:
            task.cancel()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(self._poller.close())
            loop.close()

    async def _poll_loop(self) -> None:
        interval_s = self.config.poll_interval_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self._http.state = json.dumps(await self._poller.poll()).encode()
            except Exception:  # a bug in one poll must not end the dashboard
                log.exception("dashboard poll failed")
            await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))

    def stop(self) -> None:
        """Stop serving and polling (a poll in flight is cancelled) and close the channels."""
        with self._lock:
            self._stop.set()
            cancel = self._cancel_poll
        if cancel is not None:
            cancel()
        if self._threads:
            self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
