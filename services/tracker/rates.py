"""A job's rate, measured by the tracker from the settled counts it sees at each recompute.

The status shows lines settled (done or failed) per second over the last ``RATE_WINDOW_S``
seconds, or the job's age if shorter (``shared.jobs``). Counting that from the lines on every
status request touched most of a fast job's lines each time; the tracker already counts the
job's settled lines at every recompute, so it keeps those counts, with the time it saw them, as
samples: the rate is the settled count now less the count at the window's start, over the time
between. Samples live in the tracker's memory, a few per second of window per open job. A
tracker that has no samples of a job (it just started, or another tracker recomputed the job
until now) starts them once from the lines themselves (``SELECT_RECENT_SETTLED``), so its first
rate is the one a count from the lines gives.

Any tracker's samples are the truth at their time (recomputes of one job are serialised by the
job's row lock), so two trackers alternating on one job each measure it right.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from uuid import UUID

from shared.jobs import RATE_WINDOW_S, rate_per_s


class RateWindow:
    """Per job, the (time, settled) samples of the last window; one per tracker process."""

    def __init__(
        self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._samples: dict[UUID, deque[tuple[float, int]]] = {}

    def knows(self, job_id: UUID) -> bool:
        return job_id in self._samples

    def start(self, job_id: UUID, *, settled: int, recent: int, age_s: float) -> None:
        """Begin a job's samples from a count of the lines settled within the window: the job
        had ``settled - recent`` settled when the window (or the job, if younger) began."""
        span = max(min(self.window_s, age_s), 0.0)
        self._samples[job_id] = deque([(self._clock() - span, max(settled - recent, 0))])

    def rate(self, job_id: UUID, settled: int) -> float | None:
        """Record ``settled`` now; lines settled per second since the window's start.

        The oldest sample kept is the newest one at or before the window's start, so the span
        measured is the window (a little more when samples are sparse, never less unless the
        job is younger). 0.0 when nothing settled in it, at any age; None for a job younger
        than ``shared.jobs.MIN_RATE_SPAN_S`` that settled some (see ``rate_per_s``).
        """
        now = self._clock()
        samples = self._samples.setdefault(job_id, deque([(now, settled)]))
        samples.append((now, settled))
        while len(samples) > 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()
        began, settled_then = samples[0]
        span = now - began
        # A retry moves settled lines back to pending: fewer settled is no negative rate.
        return rate_per_s(max(settled - settled_then, 0), age_s=span, window_s=span)

    def forget(self, job_id: UUID) -> None:
        """A final job moves no more (a re-opened one starts again from its lines)."""
        self._samples.pop(job_id, None)

    def forget_idle(self) -> None:
        """Drop jobs this tracker has not recomputed for two windows: another tracker has them,
        or they ended while it looked away. Their next recompute here starts again."""
        stale = self._clock() - 2 * self.window_s
        for job_id in [j for j, s in self._samples.items() if s[-1][0] < stale]:
            del self._samples[job_id]
