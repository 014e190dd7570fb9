"""When to repeat a store request and how long to wait, built on tenacity.

Retried: 408, 429, 500, 502, 503, 504 and the CDN statuses 520-524; timeouts, connection
errors, cut or undecodable responses; bodies that are not JSON or not the expected shape. Waits
grow exponentially with full jitter; a ``Retry-After`` header raises the wait to at least its
value (both capped by ``backoff_max_s``). Attempts stop at ``max_attempts`` or when the next wait
would overrun ``budget_s`` (a request already in flight may still run up to its deadline, the
client's total bound on one attempt: a deadline hit is a transient failure like a timeout).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import tenacity
from tenacity.wait import wait_base

from shared.settings import Settings

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for one logical request; tests shrink it to milliseconds."""

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    budget_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.backoff_base_s, self.backoff_max_s, self.budget_s) < 0:
            raise ValueError("backoff and budget must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings, *, budget_s: float = 120.0) -> RetryPolicy:
        return cls(
            max_attempts=settings.store_max_attempts,
            backoff_max_s=settings.store_backoff_max_s,
            budget_s=budget_s,
        )


class TransientFailure(Exception):
    """One failed attempt worth repeating. Holds only safe facts: never a URL or an httpx text."""

    def __init__(
        self, kind: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), else None.

    A date in the past gives 0; anything unparseable gives None, so the plain backoff applies.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT by definition.
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


class _BackoffHonouringRetryAfter(wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_base_s, max=policy.backoff_max_s
        )
        self._cap = policy.backoff_max_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = self._backoff(retry_state)
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, TransientFailure) and failure.retry_after_s is not None:
            delay = max(delay, min(failure.retry_after_s, self._cap))
        return delay


def retrying(
    policy: RetryPolicy,
    before_sleep: Callable[[tenacity.RetryCallState], Awaitable[None] | None],
) -> tenacity.AsyncRetrying:
    """A fresh retry controller (one per logical request: tenacity keeps per-call state)."""
    return tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts)
        | tenacity.stop_before_delay(policy.budget_s),
        wait=_BackoffHonouringRetryAfter(policy),
        retry=tenacity.retry_if_exception_type(TransientFailure),
        before_sleep=before_sleep,
        reraise=False,
    )
