"""One status poller per followed job, shared by every progress stream of it in this process.

A progress stream (``services.tracker.sse``) used to read the job's status itself every
``progress_interval_s``, so 500 people watching one job meant 500 reads per interval. A
``JobFeed`` reads it once per interval, whatever the number of followers, and wakes them when it
changed; each stream still numbers its own events, checks its own credential and ends with its
own ``complete``. The feed starts with its first follower and stops with its last, or once the
job is final or gone (nothing follows then).

A follower's first status is its own read (the one that answers 404 for a missing job), offered
to the feed: of two reads, the one started later saw the newer job row, so each follower starts
from the newest status known and no stream ever steps back to an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from uuid import UUID

import asyncpg

from shared.db import for_org
from shared.jobs import JobStatus, get_status

log = logging.getLogger("woosync.tracker.feeds")

# Reads a job's status; None when the job is gone (or is not the org's).
ReadStatus = Callable[[UUID, UUID], Awaitable[JobStatus | None]]

READ_FAILED = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def pool_reader(pool: asyncpg.Pool) -> ReadStatus:
    """The status read of ``shared.jobs``, in a transaction that names the org."""

    async def read(org_id: UUID, job_id: UUID) -> JobStatus | None:
        return await get_status(for_org(pool, org_id), org_id=org_id, job_id=job_id)

    return read


class JobFeed:
    """The newest status of one job, and a way to wait for the next one."""

    def __init__(self, org_id: UUID, job_id: UUID, first: JobStatus | None, read_at: float):
        self.org_id = org_id
        self.job_id = job_id
        self.status = first
        self.version = 1
        self.followers = 0
        self._read_at = read_at  # when the read behind ``status`` started
        self._changed = asyncio.Event()
        self.poked = asyncio.Event()  # the job is known to have changed: read it now
        self.task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """Final or gone: the status will not change any more."""
        return self.status is None or self.status.is_final

    def offer(self, status: JobStatus | None, read_at: float) -> None:
        """A status read that started at ``read_at``; kept if no later read is known, and the
        followers woken if it differs from the one they have."""
        if read_at < self._read_at:
            return
        self._read_at = read_at
        if status == self.status:
            return
        self.status = status
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, seen: int, timeout_s: float | None) -> None:
        """Until a version newer than ``seen`` is there, at most ``timeout_s``."""
        if self.version != seen:
            return
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await changed.wait()


class JobFeeds:
    """The feeds of one tracker process (job id -> feed); everything on one event loop."""

    def __init__(
        self,
        read: ReadStatus,
        interval_s: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``sleep`` waits out an interval between reads (tests step it by hand)."""
        self._read = read
        self._interval_s = interval_s
        self._sleep = sleep
        self._feeds: dict[tuple[UUID, UUID], JobFeed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def poke(self, org_id: UUID, job_id: UUID) -> None:
        """The job changed (this process's tracker finished it): its feed, if any, reads it
        now instead of at the end of its interval."""
        feed = self._feeds.get((org_id, job_id))
        if feed is not None:
            feed.poked.set()

    async def read(self, org_id: UUID, job_id: UUID) -> tuple[JobStatus | None, float]:
        """A status read of one's own (a stream's first), with the time it started."""
        started = asyncio.get_running_loop().time()
        return await self._read(org_id, job_id), started

    @contextlib.asynccontextmanager
    async def follow(
        self, org_id: UUID, job_id: UUID, first: JobStatus | None, read_at: float
    ) -> AsyncIterator[JobFeed]:
        """The job's feed for as long as the caller follows it; ``first`` (read at ``read_at``)
        is offered to it. The feed's poller stops when its last follower leaves."""
        key = (org_id, job_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = JobFeed(org_id, job_id, first, read_at)
        else:
            feed.offer(first, read_at)
        if (feed.task is None or feed.task.done()) and not feed.ended:
            feed.task = asyncio.create_task(self._poll(feed), name=f"progress-feed-{job_id}")
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0:
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await feed.task

    async def _poll(self, feed: JobFeed) -> None:
        """One read per interval until the job is final or gone (or nobody follows)."""
        loop = asyncio.get_running_loop()
        failing = False
        while not feed.ended:
            await self._nap(feed)
            started = loop.time()
            try:
                status = await self._read(feed.org_id, feed.job_id)
            except READ_FAILED as exc:
                if not failing:  # once per outage, not four times a second
                    log.warning(
                        "progress of job %s: database read failed (%s); retrying", feed.job_id, exc
                    )
                failing = True
                continue
            failing = False
            feed.offer(status, started)

    async def _nap(self, feed: JobFeed) -> None:
        """The interval between two reads, cut short by :meth:`poke`."""
        if not feed.poked.is_set():
            sleeping = asyncio.ensure_future(self._sleep(self._interval_s))
            poked = asyncio.ensure_future(feed.poked.wait())
            try:
                await asyncio.wait((sleeping, poked), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeping.cancel()
                poked.cancel()
        feed.poked.clear()


class SharedChecks:
    """The rechecks of open streams, shared so their database work does not grow with them.

    Every stream still rechecks its own credential every ``interval_s`` and ends on its own when
    it no longer holds; but the streams of one API key share one database read per half
    interval (a revoked key still ends each of its streams within one and a half intervals), a
    progress token is checked in memory, and the leases of the streams whose check passed are
    renewed together, in one statement per ``interval_s / 2`` (a lease outlives several).
    """

    def __init__(
        self,
        check_key: Callable[[UUID, UUID], Awaitable[bool]],
        renew_many: Callable[[list[UUID]], Awaitable[None]],
        interval_s: float,
    ) -> None:
        """``check_key(key_id, org_id)``: the key is not revoked; ``renew_many(leases)``."""
        self._check_key = check_key
        self._renew_many = renew_many
        self._fresh_s = interval_s / 2
        self._answers: dict[UUID, tuple[float, asyncio.Task[bool]]] = {}
        self._renewals: set[UUID] = set()
        self._flush: asyncio.Task[None] | None = None

    async def key_is_active(self, key_id: UUID, org_id: UUID) -> bool:
        """One read per key per half interval, whatever the number of its streams."""
        now = asyncio.get_running_loop().time()
        for stale in [k for k, (until, _) in self._answers.items() if until <= now]:
            del self._answers[stale]
        answer = self._answers.get(key_id)
        if answer is None:
            task = asyncio.create_task(self._check_key(key_id, org_id))
            answer = self._answers[key_id] = (now + self._fresh_s, task)
        return await asyncio.shield(answer[1])

    def renew(self, lease: UUID) -> None:
        """Renew ``lease`` with the others asked for within half an interval."""
        self._renewals.add(lease)
        if self._flush is None:
            self._flush = asyncio.create_task(self._renew_soon())

    async def _renew_soon(self) -> None:
        try:
            await asyncio.sleep(self._fresh_s)
        finally:
            self._flush = None
        leases, self._renewals = list(self._renewals), set()
        try:
            await self._renew_many(leases)
        except READ_FAILED as exc:  # the next checks renew them; leases outlive a few misses
            log.warning("renewing %d stream leases failed (%s)", len(leases), exc)
