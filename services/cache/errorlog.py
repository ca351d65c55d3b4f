"""Logging for problems that recur (a Redis outage, a broken stream): at most once per interval.

A module of its own so that what only needs it (the cache client embedded in other services) does
not import redis: ~75 ms of a service's start-up, measured with ``python -X importtime``.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs a recurring problem at most once per interval, with how often it happened since."""

    def __init__(self, logger: logging.Logger, interval_ms: int) -> None:
        self._logger = logger
        self._interval_ns = interval_ms * 1_000_000
        self._last_ns = -self._interval_ns
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic_ns()
        if now - self._last_ns < self._interval_ns:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" (and {self._suppressed} more since the last report)"
        self._logger.warning(message, *args)
        self._last_ns = now
        self._suppressed = 0
