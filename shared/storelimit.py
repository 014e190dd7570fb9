"""Adaptive per-store concurrency: how many requests woosync keeps in flight to one store.

A job started without a ``concurrency`` option does not guess: its fetcher finds what the store
sustains while it reads it, and remembers that for the store's next sync.

* :class:`Aimd` is the decision, pure (fed events, no clock, no I/O): after each *window* of
  ``limit`` answers sent at the current limit, if the limit was actually reached, it raises the
  limit while the window's median latency stays within ``LATENCY_TOLERANCE`` of the lowest seen,
  or while pages per second (``limit / latency``, Little's law) still grow at least
  ``RATE_GAIN`` as fast as the limit (a store whose latency is partly work it does one at a
  time: slower pages, but more of them). It doubles until the first trouble ("slow start"),
  then adds one per window. A 429 lowers it to just below the number in flight when the store
  refused (to half during slow start), other transient failures (5xx, timeouts, cut
  connections) by ``OVERLOAD_DECREASE``; latency grown without more pages per second,
  ``SLOW_WINDOWS`` windows in a row (one may be the fetcher's own load), to the limit that gave
  the most pages per second (one less at least): the store only queued the rest. Answers to
  requests sent before the latest change are old news and change nothing, so one burst of 429s
  lowers the limit once. After a 429 the level that was refused is probed again only after
  ``PROBE_WINDOWS`` windows, twice as many after each refused probe, so a store that refuses
  above N in flight meets a refused request rarely; and only once the windows held below it
  lasted ``PROBE_COST_RATIO`` times the pause its ``Retry-After`` imposed, since a refused
  probe costs that pause (nothing is sent to the store meanwhile): probing a store that stays
  at its limit costs at most about a tenth of the crawl's time, whatever pause it asks for.
  What is remembered is never a level refused last, and a sync starting from it holds there
  ``PROBE_WINDOWS`` windows before going higher.
  The limit never exceeds the ceiling (``WOOSYNC_MAX_STORE_CONCURRENCY``).
* :class:`StoreGate` admits each HTTP attempt of one store (the client asks it per attempt, so
  retries are counted too and a retry's wait holds no slot) and honours ``Retry-After``: no new
  request goes to the store until it has passed.
* The limit is the store's, shared by every fetcher process reading it: the store is the server
  behind a normalized URL (``shared.storeurl.store_identity``), whichever orgs connect to it.
  Table ``woosync_store_limit`` (migration 0016) holds its current limit (which is what the next
  sync starts from) and its latest Retry-After; each process reading the store holds a lease in
  ``woosync_store_lease`` for its share of the limit, and sends at most that many at once. A
  gate meets the database only every ``SYNC_INTERVAL_S`` and when its decision changes the limit
  (a compare-and-set: two processes seeing the same overload lower it once), never per request.
  Shares are fair (a newcomer gets ``limit / readers`` as the others' requests drain), a share
  recorded is never below what the process has in flight, so the processes together never
  exceed the limit they were granted from; a process that dies frees its share when its lease
  runs out (``LEASE_S``).

A job with an explicit ``concurrency`` reads with exactly that many workers and no gate.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from uuid import uuid4

import asyncpg

log = logging.getLogger("woosync.storelimit")

LATENCY_TOLERANCE = 1.5  # a window this much slower than the fastest seen: the store queues
SLOW_WINDOWS = 2  # consecutive slow windows that lower the limit
RATE_GAIN = 0.5  # slower pages still pay while pages per second grow half as fast as the limit
OVERLOAD_DECREASE = 0.7  # factor on a 5xx, a timeout or a cut connection
PROBE_WINDOWS = 8  # windows at the level below a refused one before probing it again
MAX_PROBE_WINDOWS = 64
PROBE_COST_RATIO = 10.0  # time held below a refused level per second of its Retry-After pause
SYNC_INTERVAL_S = 0.5
MIN_SYNC_GAP_S = 0.1  # a gate waiting for a larger share asks at most this often
LEASE_S = 10.0


@dataclass
class Aimd:
    """The limit of one store and how it moves; see the module docstring."""

    limit: int
    ceiling: int
    slow_start: bool = True
    epoch: int = 0  # bumped on every change; answers carry the epoch they were sent in
    lowest_latency_s: float | None = None
    refused_at: int | None = None  # the in-flight count at which the store last refused
    probe_windows: int = PROBE_WINDOWS
    held: int = 0  # windows spent below refused_at since the latest refusal or probe
    held_s: float = 0.0  # how long those windows lasted (their median latencies)
    probe_after_s: float = 0.0  # PROBE_COST_RATIO x the latest refusal's pause
    slow_windows: int = 0  # consecutive windows slower than the tolerance
    reason: str = ""  # why the latest change was made, for the log
    best_rate: float = 0.0  # most answers per second seen (limit / median latency of a window)
    best_limit: int = 1  # the limit that reached it
    _latencies: list[float] = field(default_factory=list)
    _used: int = 0  # most requests in flight at once in the current window

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError("the ceiling must be at least 1")
        self.limit = max(1, min(self.limit, self.ceiling))

    def answered(self, latency_s: float, *, in_flight: int, epoch: int) -> bool:
        """A request sent with ``in_flight`` requests out (itself included) in ``epoch`` was
        answered after ``latency_s``; True when the limit changed."""
        if epoch != self.epoch:
            return False
        self._latencies.append(latency_s)
        self._used = max(self._used, in_flight)
        if len(self._latencies) < self.limit:
            return False
        typical = statistics.median(self._latencies)
        used = self._used >= self.limit
        self._latencies.clear()
        self._used = 0
        if self.lowest_latency_s is None or typical < self.lowest_latency_s:
            self.lowest_latency_s = typical
        if not used:
            return False  # the limit was not reached: the window says nothing about more
        rate = self.limit / typical  # pages per second at this limit (Little's law)
        # Pages per second grow at least RATE_GAIN as fast as the limit did since the best.
        gaining = (
            self.best_rate > 0
            and self.limit > self.best_limit
            and (rate / self.best_rate - 1 >= RATE_GAIN * (self.limit / self.best_limit - 1))
        )
        if rate > self.best_rate:
            self.best_rate, self.best_limit = rate, self.limit
        if typical > LATENCY_TOLERANCE * self.lowest_latency_s and not gaining:
            # Slower pages, and no more of them per second: the store queues what is sent.
            self.slow_windows += 1
            if self.slow_windows < SLOW_WINDOWS:
                return False  # one slow window may be the fetcher's own load
            self.slow_windows = 0
            self.slow_start = False
            self.reason = f"latency {typical:.3f}s against {self.lowest_latency_s:.3f}s"
            return self._set(min(self.limit - 1, self.best_limit))
        self.slow_windows = 0
        if self.refused_at is not None and self.limit >= self.refused_at:
            # A whole window at the level once refused: the store takes it now.
            self.refused_at, self.probe_windows, self.held = None, PROBE_WINDOWS, 0
            self.held_s = self.probe_after_s = 0.0
        if self.refused_at is not None and self.limit + 1 >= self.refused_at:
            # A window lasts about one latency: its requests were all out at once.
            self.held += 1
            self.held_s += typical
            if self.held < self.probe_windows or self.held_s < self.probe_after_s:
                return False
            self.held, self.held_s = 0, 0.0
        self.reason = "flat latency"
        return self._set(self.limit * 2 if self.slow_start else self.limit + 1)

    def refused(self, *, in_flight: int, epoch: int, pause_s: float = 0.0) -> bool:
        """The store answered 429 to a request sent with ``in_flight`` out, and asked for a
        pause of ``pause_s`` (its Retry-After, capped); True when the limit changed."""
        if epoch != self.epoch:
            return False
        if self.refused_at is not None:
            self.probe_windows = min(MAX_PROBE_WINDOWS, self.probe_windows * 2)
        self.refused_at, self.held, self.held_s = in_flight, 0, 0.0
        self.probe_after_s = PROBE_COST_RATIO * max(0.0, pause_s)
        target = self.limit // 2 if self.slow_start else in_flight - 1
        self.slow_start = False
        self.reason = f"429 with {in_flight} in flight"
        return self._set(min(self.limit - 1, target))

    def failed(self, *, epoch: int) -> bool:
        """A 5xx, a timeout or a cut connection; True when the limit changed."""
        if epoch != self.epoch:
            return False
        factor = 0.5 if self.slow_start else OVERLOAD_DECREASE
        self.slow_start = False
        self.reason = "a transient failure"
        return self._set(min(self.limit - 1, math.floor(self.limit * factor)))

    @property
    def learned(self) -> int:
        """What to remember for the store's next sync: the limit, but never a level the store
        refused last (a probe that ended with the crawl proves nothing)."""
        if self.refused_at is not None:
            return max(1, min(self.limit, self.refused_at - 1))
        return self.limit

    def resume(self, limit: int) -> None:
        """Start from what an earlier sync learned: no slow start, and nothing above it before
        ``PROBE_WINDOWS`` windows have held at it."""
        self.adopt(limit)
        self.slow_start = False
        self.refused_at, self.held, self.probe_windows = self.limit + 1, 0, PROBE_WINDOWS
        self.held_s = self.probe_after_s = 0.0

    def adopt(self, limit: int) -> None:
        """Another process changed the store's limit: take it, and start a fresh window."""
        limit = max(1, min(limit, self.ceiling))
        if limit != self.limit:
            self.limit = limit
            self._new_epoch()

    def _set(self, limit: int) -> bool:
        limit = max(1, min(limit, self.ceiling))
        if limit == self.limit:
            return False
        self.limit = limit
        self._new_epoch()
        return True

    def _new_epoch(self) -> None:
        self.epoch += 1
        self._latencies.clear()
        self._used = 0


def store_key(store_identity: str) -> str:
    """The key of a store in the shared tables: no address in clear (see migration 0016)."""
    return hashlib.sha256(store_identity.encode()).hexdigest()


LOCK_STORE = "SELECT pg_advisory_xact_lock(7428104, hashtext($1))"
DROP_EXPIRED_LEASES = "DELETE FROM woosync_store_lease WHERE store = $1 AND expires_at <= now()"
SELECT_STORE_LIMIT = """
SELECT concurrency,
       greatest(0, extract(epoch FROM paused_until - now()))::float8 AS pause_s
FROM woosync_store_limit WHERE store = $1
"""
# $1 store, $2 limit, $3 seconds of pause from now (0: none).
WRITE_STORE_LIMIT = """
INSERT INTO woosync_store_limit AS s (store, concurrency, paused_until)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (store) DO UPDATE
SET concurrency = $2, updated_at = now(),
    paused_until = greatest(s.paused_until, now() + make_interval(secs => $3))
"""
SELECT_OTHER_LEASES = """
SELECT coalesce(sum(slots), 0)::int AS slots, count(*)::int AS readers
FROM woosync_store_lease WHERE store = $1 AND id <> $2
"""
# $1 id, $2 store, $3 slots, $4 lease seconds.
HOLD_LEASE = """
INSERT INTO woosync_store_lease (id, store, slots, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (id) DO UPDATE SET slots = $3, expires_at = now() + make_interval(secs => $4)
"""
DROP_LEASE = "DELETE FROM woosync_store_lease WHERE id = $1"


def fair_share(limit: int, wanted: int, others_slots: int, others: int) -> int:
    """Slots a process may hold: what it wants, within what the others leave of ``limit``, and
    (when others read the store too) within its fair part of it."""
    share = min(wanted, max(0, limit - others_slots))
    if others:
        share = min(share, max(1, math.ceil(limit / (others + 1))))
    return share


class StoreGate:
    """Admits the HTTP attempts of one store in this process; see the module docstring.

    Use :meth:`attempt` around each attempt and report how it went on the yielded
    :class:`Attempt`; an attempt left unreported (a 4xx, a refused certificate) changes
    nothing."""

    def __init__(
        self,
        key: str,
        aimd: Aimd,
        pool: asyncpg.Pool,
        *,
        max_pause_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_pause_s`` caps a Retry-After (``WOOSYNC_STORE_BACKOFF_MAX_S``, as the client's
        retries do): a store asking for an hour does not stall the crawl for one."""
        self.key = key
        self._max_pause_s = max_pause_s
        self.aimd = aimd
        self._pool = pool
        self._clock = clock
        self._lease = uuid4()
        self._in_flight = 0
        self._granted = 0
        self._synced_limit: int | None = None  # the shared limit as last read or written
        self._paused_until = 0.0
        self._pause_to_share = 0.0  # a Retry-After not yet written to the database
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None
        self.peak_in_flight = 0

    @property
    def limit(self) -> int:
        return self.aimd.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def open(self) -> None:
        """Take this process's first share, then keep it up to date in the background."""
        await self._sync()
        self._syncer = asyncio.create_task(self._keep_synced())

    async def close(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with suppress(asyncio.CancelledError):
                await self._syncer
        self.aimd.adopt(self.aimd.learned)
        try:
            await self._sync()  # what was learned is remembered for the next sync
            await self._pool.execute(DROP_LEASE, self._lease)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("a store lease stays until it expires: %s", type(exc).__name__)

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[Attempt]:
        while True:
            wait = self._paused_until - self._clock()
            if wait <= 0 and self._in_flight < min(self.aimd.limit, self._granted):
                break
            if self._in_flight >= self._granted and self._granted < self.aimd.limit:
                self._poke.set()  # more is wanted than held: ask for it now
            self._changed.clear()
            with suppress(TimeoutError):
                timeout = wait if wait > 0 else SYNC_INTERVAL_S
                await asyncio.wait_for(self._changed.wait(), timeout)
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        attempt = Attempt(self, self._in_flight, self.aimd.epoch, self._clock())
        try:
            yield attempt
        finally:
            self._in_flight -= 1
            self._changed.set()

    def _answered(self, attempt: Attempt) -> None:
        latency = self._clock() - attempt.started
        if self.aimd.answered(latency, in_flight=attempt.in_flight, epoch=attempt.epoch):
            self._decided()

    def _refused(self, attempt: Attempt, status: int | None, retry_after_s: float | None) -> None:
        pause_s = 0.0
        if retry_after_s is not None and retry_after_s > 0:
            pause_s = min(retry_after_s, self._max_pause_s)
            self._paused_until = max(self._paused_until, self._clock() + pause_s)
            self._pause_to_share = max(self._pause_to_share, pause_s)
            self._poke.set()
        if status == 429:
            changed = self.aimd.refused(
                in_flight=attempt.in_flight, epoch=attempt.epoch, pause_s=pause_s
            )
        else:
            changed = self.aimd.failed(epoch=attempt.epoch)
        if changed:
            self._decided()

    def _decided(self) -> None:
        log.info(
            "store %s: concurrency now %d (%s)", self.key[:12], self.aimd.limit, self.aimd.reason
        )
        self._poke.set()
        self._changed.set()

    async def _keep_synced(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), SYNC_INTERVAL_S)
            self._poke.clear()
            try:
                await self._sync()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Keep to the share held; it runs out with the lease if this goes on.
                log.warning("store %s: share not renewed: %s", self.key[:12], type(exc).__name__)
            await asyncio.sleep(MIN_SYNC_GAP_S)

    async def _sync(self) -> None:
        """Share a changed limit (compare-and-set) and a Retry-After, adopt the store's limit
        and pause, and renew this process's share. One transaction under the store's lock."""
        pause, self._pause_to_share = self._pause_to_share, 0.0
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_STORE, self.key)
            await conn.execute(DROP_EXPIRED_LEASES, self.key)
            row = await conn.fetchrow(SELECT_STORE_LIMIT, self.key)
            if row is None and self._synced_limit is None:
                pass  # a store not seen before: this gate's start, in slow start
            elif self._synced_limit is None:
                self.aimd.resume(row["concurrency"])
            elif row is not None and row["concurrency"] != self._synced_limit:
                self.aimd.adopt(row["concurrency"])  # another process decided first
            limit = self.aimd.limit
            if row is None or row["concurrency"] != limit or pause:
                await conn.execute(WRITE_STORE_LIMIT, self.key, limit, pause)
            if row is not None and row["pause_s"] > 0:
                until = self._clock() + min(row["pause_s"], self._max_pause_s)
                self._paused_until = max(self._paused_until, until)
            self._synced_limit = limit
            others = await conn.fetchrow(SELECT_OTHER_LEASES, self.key, self._lease)
            self._granted = fair_share(limit, limit, others["slots"], others["readers"])
            held = max(self._granted, self._in_flight)
            await conn.execute(HOLD_LEASE, self._lease, self.key, held, LEASE_S)
        self._changed.set()


@dataclass
class Attempt:
    """One admitted HTTP attempt; report its outcome once."""

    gate: StoreGate
    in_flight: int
    epoch: int
    started: float

    def answered(self) -> None:
        self.gate._answered(self)

    def refused(self, status: int | None, retry_after_s: float | None = None) -> None:
        """A transient failure: ``status`` 429, a 5xx, or None (a timeout, a cut connection)."""
        self.gate._refused(self, status, retry_after_s)


@dataclass
class StoreLimits:
    """The gates of this process, one per store however many of its jobs read it."""

    pool: asyncpg.Pool
    start: int  # WOOSYNC_DEFAULT_CONCURRENCY: the first limit of a store never seen
    ceiling: int  # WOOSYNC_MAX_STORE_CONCURRENCY
    max_pause_s: float = 30.0  # WOOSYNC_STORE_BACKOFF_MAX_S
    _gates: dict[str, tuple[StoreGate, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def gate(self, store_identity: str) -> AsyncIterator[StoreGate]:
        key = store_key(store_identity)
        if key in self._gates:
            gate, users = self._gates[key]
            self._gates[key] = (gate, users + 1)
        else:
            aimd = Aimd(self.start, self.ceiling)
            gate = StoreGate(key, aimd, self.pool, max_pause_s=self.max_pause_s)
            self._gates[key] = (gate, 1)
            try:
                await gate.open()
            except BaseException:
                del self._gates[key]
                raise
        try:
            yield gate
        finally:
            gate, users = self._gates[key]
            if users > 1:
                self._gates[key] = (gate, users - 1)
            else:
                del self._gates[key]
                await gate.close()

    async def remembered(self, store_identity: str) -> int | None:
        """The limit the store's next sync starts from; None for a store never read."""
        value: int | None = await self.pool.fetchval(
            "SELECT concurrency FROM woosync_store_limit WHERE store = $1",
            store_key(store_identity),
        )
        return value
