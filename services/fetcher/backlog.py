"""Backpressure: a crawl reads no further ahead of the syncer than its share of a budget.

The fetcher reads far faster than the syncer writes, and the syncer's queue is one FIFO for
every org. Unbounded, a crawl fills that queue with its whole job in the order it read it:
the jobs read first finish in seconds and the rest, a small store's job started beside a huge
one included, wait behind all of it. So a crawl takes its next page only while its job's
*backlog* (customers published and not yet taken by the syncer: lines ``pending``, plus the
pages it is reading) stays within its share of the fetcher's budget
(``WOOSYNC_FETCH_BACKLOG_CUSTOMERS``): the budget divided among the crawls this fetcher runs,
never below ``FLOOR_PAGES`` pages of the job's batch size. The queue then holds a few batches of
every job, interleaved, and the syncer serves the jobs in turn (each gets its share of the
syncer, a huge one no more than a small one), while one job alone may run the whole budget ahead
and keep the syncer busy.

The backlog is read from the line counters of migration 0023 (exact in any snapshot, a handful
of rows), once when the crawl begins (an earlier crawl of the job, handed on or redelivered,
may have left customers pending) and then only when the crawl's own estimate says it has no
room: the estimate is the last read plus what the crawl published since, never below the
truth. Out of room, a crawl waits until half its share has drained (then it reads several
pages at once, while the queue still holds the other half). While it waits it reads again at
the pace its job's lines leave ``pending`` (at most every ``WOOSYNC_FETCH_BACKLOG_POLL_S``), one
read per crawl however many of its workers wait. Lines the syncer failed once and retries are
not ``pending``: they wait in the retry tiers, not in the queue. Waiting looks like no stall to
the tracker: the job's lines are being settled meanwhile (and a job whose lines nobody settles
is stalled indeed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

from services.fetcher import queries as q
from shared.db import OrgScope

FLOOR_PAGES = 2  # a crawl may always run this many pages ahead of the syncer
MIN_POLL_S = 0.05
FIRST_POLL_S = 0.2  # while the job's drain rate is not known yet


def share(budget: int, crawls: int, batch_size: int) -> int:
    """The customers one crawl may have published and not yet settled: its part of the
    fetcher's ``budget`` among ``crawls`` running crawls, never below FLOOR_PAGES pages."""
    return max(FLOOR_PAGES * batch_size, budget // max(crawls, 1))


def poll_delay(
    deficit: int, rate: float | None, longest_s: float, previous_s: float | None = None
) -> float:
    """How long a waiting crawl sleeps before reading its backlog again: about the time its job
    needs to settle ``deficit`` more customers at ``rate`` per second; while nothing settled
    (or the rate is not known yet), FIRST_POLL_S doubling from the ``previous_s`` wait."""
    if rate is None or rate <= 0:
        guess = FIRST_POLL_S if previous_s is None else 2 * previous_s
    else:
        guess = deficit / rate
    return min(max(guess, MIN_POLL_S), longest_s)


@dataclass
class Backlog:
    """One fetcher's budget of customers published ahead of the syncer, and its crawls."""

    budget: int  # WOOSYNC_FETCH_BACKLOG_CUSTOMERS
    poll_s: float = 1.0  # WOOSYNC_FETCH_BACKLOG_POLL_S: the longest wait between two reads
    crawls: set[CrawlBacklog] = field(default_factory=set)

    def bound(self, batch_size: int) -> int:
        return share(self.budget, len(self.crawls), batch_size)

    @contextmanager
    def crawl(self, job_id: UUID, db: OrgScope) -> Iterator[CrawlBacklog]:
        """A running crawl's part of the budget, for as long as it runs."""
        crawl = CrawlBacklog(self, job_id, db)
        self.crawls.add(crawl)
        try:
            yield crawl
        finally:
            self.crawls.discard(crawl)


@dataclass(eq=False)
class CrawlBacklog:
    """One crawl's backlog: ``admit`` before reading a page, ``release`` after recording it."""

    backlog: Backlog
    job_id: UUID
    db: OrgScope
    pending: int = 0  # the job's pending lines as last read, plus what was published since
    in_flight: int = 0  # pages admitted and not recorded yet
    waiting: int = 0  # workers waiting for room
    blocked: bool = False  # out of room: no page is taken until the refill mark is reached
    reads: int = 0  # backlog reads so far
    _published: int = 0  # customers this crawl published, in all
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _next_read: float = 0.0
    _last: tuple[float, int] | None = None  # (time, lines no longer pending) of the last read
    _started: bool = False  # the job's backlog was read once, when the crawl began
    _wait: float | None = None  # the latest wait between two reads; None: there was room

    def room(self, batch_size: int) -> int:
        """Customers the crawl may still publish beyond its pages in flight."""
        return self.backlog.bound(batch_size) - self.pending - self.in_flight * batch_size

    def published(self, customers: int) -> None:
        self._published += customers
        self.pending += customers

    def release(self) -> None:
        self.in_flight -= 1

    async def admit(self, batch_size: int, give_up: Callable[[], bool]) -> bool:
        """Waits until a page of ``batch_size`` fits in the crawl's share, and counts it in
        flight (True); False, waiting no longer, once ``give_up`` says so while it waits (the
        job was paused, the slice is over)."""
        if not self._started:
            await self._read(batch_size)  # the backlog an earlier crawl of the job left
        while True:
            if not self.blocked:
                if self.room(batch_size) >= batch_size:
                    self.in_flight += 1
                    return True
                self.blocked = True
            if give_up():
                return False
            self.waiting += 1
            try:
                await self._read(batch_size)
            finally:
                self.waiting -= 1

    def refill_mark(self, batch_size: int) -> int:
        """The room a blocked crawl waits for: half its share (at least a page), so it then
        reads several pages at once, and the queue keeps a part of its share while it does."""
        return max(batch_size, self.backlog.bound(batch_size) // 2)

    async def _read(self, batch_size: int) -> None:
        """Read the job's backlog again, at most once per due time for all waiting workers;
        unblocks the crawl once its room reaches the refill mark."""
        async with self._lock:
            if self._started and not self.blocked:
                return  # another worker's read made room
            loop = asyncio.get_running_loop()
            if (delay := self._next_read - loop.time()) > 0:
                await asyncio.sleep(delay)
            mark = self._published
            row = await self.db.fetchrow(q.SELECT_BACKLOG, self.job_id, self.db.org_id)
            now = loop.time()
            self.reads += 1
            self.pending = row["unsent"] + (self._published - mark)
            left = row["lines"] - row["unsent"]
            rate = None
            if self._last is not None and now > self._last[0]:
                rate = (left - self._last[1]) / (now - self._last[0])
            self._last = (now, left)
            self._started = True
            deficit = self.refill_mark(batch_size) - self.room(batch_size)
            if not self.blocked or deficit <= 0:
                self.blocked = False
                self._wait, self._next_read = None, now
            else:
                self._wait = poll_delay(deficit, rate, self.backlog.poll_s, self._wait)
                self._next_read = now + self._wait
