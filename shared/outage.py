"""One log line when a dependency goes away and one when it is back, instead of one per retry.

The tracker retries its database work every tick (four times a second by default); during a
PostgreSQL restart that wrote a traceback per tick and per job, burying the one line an operator
needs. Infrastructure errors (``shared.consuming.is_infrastructure_error``) are summarised this
way; anything else is a bug and keeps its traceback every time.
"""

from __future__ import annotations

import logging
import time

from shared.consuming import is_infrastructure_error


class OutageLog:
    def __init__(self, log: logging.Logger, dependency: str) -> None:
        self._log = log
        self._dependency = dependency
        self._down_since: float | None = None
        self.suppressed = 0  # failures not logged during the current outage

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException, doing: str) -> None:
        """Record a failure of ``doing``; the caller retries later."""
        if not is_infrastructure_error(exc):
            self._log.error("%s failed; retrying later", doing, exc_info=exc)
            return
        if self._down_since is not None:
            self.suppressed += 1
            return
        self._down_since = time.monotonic()
        self.suppressed = 0
        self._log.warning(
            "%s is unavailable (%s: %s) while %s; retrying quietly until it is back",
            self._dependency,
            type(exc).__name__,
            str(exc)[:200] or "no detail",
            doing,
        )

    def succeeded(self) -> None:
        """Record a success; ends an outage, if there was one."""
        if self._down_since is None:
            return
        self._log.warning(
            "%s is back after %.1f s (%d more failures while it was away)",
            self._dependency,
            time.monotonic() - self._down_since,
            self.suppressed,
        )
        self._down_since = None
