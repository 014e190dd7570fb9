"""Job bookkeeping: recompute counts from the line table, finish jobs, announce them.

Why this is safe under at-least-once delivery and crashes:

* Counts are recomputed from the lines (see :mod:`.queries`), never added up from events, so a
  duplicated, late or reordered event changes nothing but the timing. The lines are counted by
  the triggers of migration 0023 as they change, in their own transactions; a recompute folds
  and sums those counter rows, so a tick costs the same for a job of a million lines as for one
  of a thousand.
* An event only says "look at this job again". The broker handler records the job id in an
  in-memory dirty set and acks; a loop recomputes dirty jobs every
  ``tracker_sweep_interval_s``, so a burst of events for one job (about a thousand for a
  100k-customer job) costs one recompute per tick, not one GROUP BY per event. Two things cut
  the wait: a tracker that had nothing to do at a tick recomputes the next event's job as soon
  as it comes; and once a job's crawl has ended (``FetchCompleted``), any event of it may be its
  last, so that job alone is recomputed between ticks, at most every ``URGENT_GAP_S`` (it
  finishes about when its last line settles, not up to a tick later; the jobs still crawling,
  a huge one among them, keep to the tick). Whoever finished a job is told at once
  (``on_finished``: the progress feeds read it then, instead of at their next interval).
* The dirty set lives in memory, so an acked event whose job was not yet recomputed would be
  lost in a crash, were it not for the full sweep: every few seconds (and at start) every job
  still ``queued`` or ``processing`` is recomputed. After a crash or restart, or for events
  published while no tracker ran, the sweep reaches the same result the lost events would have.
  That is why acking before the recompute loses nothing.
* Finishing is a guarded ``UPDATE ... WHERE state IN <running> RETURNING``, so of
  any number of concurrent recomputes (in one tracker or several) exactly one sees the
  transition, records the activity row in the same transaction, and publishes ``SyncCompleted``.
* ``FetchFailed`` is not coalesced: it carries the error to store, so it is applied before the
  ack. The consumer edge (``shared.consuming.consume``) parks a malformed event and requeues one
  that met a lost database.

* A job can also stop moving because the services that should move it are gone. At every full
  sweep, a job that could still finish but showed no progress for ``stall_timeout_s`` (no page
  read, no count changed, no line updated; see ``SELECT_STALL_CANDIDATES``) is failed with
  ``last_error`` "stalled: ...", recorded once as ``job.stalled`` in the activity log, and can be
  resumed with the api's ``retry``. A job still ``queued`` has had no fetcher yet, which is normal
  while fetchers are busy, so it counts as stalled only while no fetcher consumes its queue.

* A job that finishes after a crawl that proved it read every customer (``fetch_proven``) marks
  the customers of its connection it did not see as deleted, in the same transaction as the
  finish (``MARK_DELETED``; docs/architecture.md, "Customers gone from their store"), so the
  finish and the marks commit together or not at all, once.

``SyncCompleted`` is published after the commit. If that publish fails, it is kept and retried
on the next tick; a crash in that window loses the announcement (not the job's state), which is
acceptable while nothing in woosync consumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from uuid import UUID

import asyncpg
from aio_pika.exceptions import PublishError
from faststream.rabbit import RabbitBroker

from services.tracker import queries as q
from services.tracker.rates import RateWindow
from shared import activity
from shared.broker import publish
from shared.conflicts import MARK_WOOSYNC_WRITER
from shared.db import OrgScope, for_org
from shared.lifecycle import FINAL_JOB_STATES, JobState
from shared.logs import log_context, redact
from shared.messages import (
    FetchCompleted,
    FetchFailed,
    LinesDone,
    LinesFailed,
    SyncCompleted,
)
from shared.outage import OutageLog
from shared.topology import Topology

log = logging.getLogger("woosync.tracker")

TrackerEvent = LinesDone | LinesFailed | FetchCompleted | FetchFailed
MAX_ERROR_CHARS = 2_000
PARENT_KIND = "orchestration"  # a parent job over children (services.api.actions.orchestrate)

Publish = Callable[[SyncCompleted], Awaitable[None]]


async def announce(broker: RabbitBroker, topology: Topology, done: SyncCompleted) -> None:
    """Publish ``sync.completed``; that no queue is bound to it yet is not an error.

    The shared publisher makes unroutable messages raise (right for work messages, which must
    reach their queue); this one is for integrations that may not exist.
    """
    try:
        await publish(broker, topology, done)
    except PublishError:
        log.debug("sync.completed for job %s: no queue is bound to it", done.job_id)


def _completed(job_id: UUID, row: asyncpg.Record, deleted: int | None = None) -> SyncCompleted:
    return SyncCompleted(
        job_id=job_id,
        org_id=row["org_id"],
        state=row["state"],
        total=row["total"],
        done=row["done_count"],
        failed=row["failed_count"],
        deleted=row["deleted_count"] if deleted is None else deleted,
    )


async def _record_final(conn: asyncpg.Connection, done: SyncCompleted, **details: Any) -> None:
    ok = done.state == JobState.DONE
    await activity.record(
        conn,
        org_id=done.org_id,
        job_id=done.job_id,
        event="job.completed" if ok else "job.failed",
        level="info" if ok else "error",
        details={
            "total": done.total,
            "done": done.done,
            "failed": done.failed,
            **({"deleted": done.deleted} if done.deleted else {}),
            **details,
        },
    )


async def mark_deleted(conn: asyncpg.Connection, job_id: UUID, org_id: UUID) -> int | None:
    """Mark the customers the job's proven crawl did not see as deleted (``MARK_DELETED``), in
    the transaction that finishes the job; the job's deleted count, or None when its crawl
    proves nothing (then nothing is marked). A ``customers.deleted`` activity row names them."""
    await conn.execute(MARK_WOOSYNC_WRITER)  # woosync's own write: no MantisNXT edit (0017)
    row = await conn.fetchrow(q.MARK_DELETED, job_id, org_id)
    if row is None or row["deleted_count"] is None:
        return None
    if row["marked"]:
        await activity.record(
            conn,
            org_id=org_id,
            job_id=job_id,
            event="customers.deleted",
            details={"deleted": row["marked"], "woo_ids": list(row["sample"] or [])},
        )
    deleted: int = row["deleted_count"]
    return deleted


async def update_rate(
    conn: asyncpg.Connection, job_id: UUID, org_id: UUID, settled: int, rates: RateWindow
) -> None:
    """Measure the job's rate from ``settled`` (its count now) and write it if it changed.

    A job these ``rates`` have no samples of starts them from its lines (``.rates``)."""
    if not rates.knows(job_id):
        recent = await conn.fetchrow(q.SELECT_RECENT_SETTLED, job_id, org_id, rates.window_s)
        rates.start(job_id, settled=settled, recent=recent["recent"], age_s=recent["age_s"])
    await conn.execute(q.SET_RATE, job_id, org_id, rates.rate(job_id, settled))


async def recompute(
    scope: OrgScope, job_id: UUID, rates: RateWindow | None = None
) -> SyncCompleted | None:
    """Bring the job's counts and rate up to date; the ``SyncCompleted`` to announce if it just
    finished.

    Returns None when nothing finished (or the job does not exist). The activity row of a
    transition is written in the same transaction, so there is exactly one per transition: a
    failed job that recovers (see ``RECOMPUTE_JOB``) finishes a second time, as done.
    ``rates`` are the caller's samples (``Tracker`` keeps one across recomputes); without them
    the rate is counted from the lines.
    """
    rates = RateWindow() if rates is None else rates
    async with scope.transaction() as conn:
        locked = await conn.fetchrow(q.LOCK_JOB, job_id, scope.org_id)
        if locked is None:
            rates.forget(job_id)
            return None
        if locked["kind"] == PARENT_KIND:  # its counts, rate and end are its children's
            row = await conn.fetchrow(q.RECOMPUTE_PARENT, job_id, scope.org_id, PARENT_KIND)
        else:
            await conn.execute(q.FOLD_LINE_COUNTS, job_id, scope.org_id)
            row = await conn.fetchrow(q.RECOMPUTE_JOB, job_id, scope.org_id)
            state = locked["state"] if row is None else row["state"]
            if state in FINAL_JOB_STATES:
                rates.forget(job_id)  # a final status shows no rate
            else:
                settled = (
                    locked["settled"] if row is None else row["done_count"] + row["failed_count"]
                )
                await update_rate(conn, job_id, scope.org_id, settled, rates)
        if row is None or not row["finished"]:
            return None
        if locked["kind"] == PARENT_KIND:  # its stores' deletions are its children's
            done = _completed(job_id, row)
        else:
            done = _completed(job_id, row, await mark_deleted(conn, job_id, scope.org_id))
        details: dict[str, Any] = {}
        if row["recovered"]:  # it had failed: say why it is done now
            details["recovered_from"] = JobState.FAILED
        if locked["kind"] == PARENT_KIND and done.state == JobState.FAILED:
            details["error"] = row["last_error"]  # each child's that is not done
        await _record_final(conn, done, **details)
    return done


async def fail_job(pool: asyncpg.Pool, event: FetchFailed) -> SyncCompleted | None:
    """Fail the job with the fetcher's error, unless it is already final."""
    error = redact(event.error)[:MAX_ERROR_CHARS]
    async with for_org(pool, event.org_id).transaction() as conn:
        row = await conn.fetchrow(q.FAIL_JOB, event.job_id, event.org_id, error)
        if row is None:
            return None
        done = _completed(event.job_id, row)
        await _record_final(conn, done, reason="fetch_failed", error=error)
    return done


def stall_error(timeout_s: float) -> str:
    return (
        f"stalled: no progress for {timeout_s:g} s; start the services that stopped, "
        "then use the retry action"
    )


async def stall_job(scope: OrgScope, job_id: UUID, timeout_s: float) -> SyncCompleted | None:
    """Fail a job that made no progress for ``timeout_s``, unless progress came meanwhile or it
    is final already; the ``job.stalled`` activity row is written in the same transaction."""
    async with scope.transaction() as conn:
        if await conn.fetchval(q.LOCK_JOB, job_id, scope.org_id) is None:
            return None
        row = await conn.fetchrow(
            q.STALL_JOB, job_id, scope.org_id, timeout_s, stall_error(timeout_s)
        )
        if row is None:
            return None
        done = _completed(job_id, row)
        await activity.record(
            conn,
            org_id=done.org_id,
            job_id=job_id,
            event="job.stalled",
            level="error",
            details={
                "stall_timeout_s": timeout_s,
                "last_progress_at": row["last_progress_at"].isoformat(),
                "previous_state": row["previous_state"],
                "fetch_complete": row["fetch_complete"],
                "total": done.total,
                "done": done.done,
                "failed": done.failed,
            },
        )
    return done


async def active_jobs(pool: asyncpg.Pool) -> dict[UUID, UUID]:
    """Every open job of every org, with its org (job id -> org id)."""
    return {row["id"]: row["org_id"] for row in await pool.fetch(q.SELECT_ACTIVE_JOBS)}


# The shortest gap between two recomputes: when an event of a job whose crawl ended comes.
URGENT_GAP_S = 0.05


class Tracker:
    """Consumes tracker events into a dirty set and recomputes dirty jobs on a timer.

    One instance per process; all its state is here (no globals). Everything runs on one event
    loop, so the dirty set needs no lock.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publish: Publish,
        *,
        sweep_interval_s: float,
        full_sweep_interval_s: float = 5.0,
        stall_timeout_s: float | None = None,
        fetchers_consuming: Callable[[], Awaitable[int]] | None = None,
        on_finished: Callable[[UUID, UUID], None] | None = None,
    ) -> None:
        """``stall_timeout_s`` None: no stall detection. ``fetchers_consuming`` counts the
        consumers of the fetcher queue (None: queued jobs are never stalled). ``on_finished``
        is told (org id, job id) of every job this tracker finished."""
        self._pool = pool
        self._stall_timeout_s = stall_timeout_s
        self._fetchers_consuming = fetchers_consuming
        self._publish = publish
        self._sweep_interval_s = sweep_interval_s
        self._full_sweep_interval_s = full_sweep_interval_s
        self._dirty: dict[UUID, UUID] = {}  # job id -> its org id
        self._database = OutageLog(log, "the database")
        self._unannounced: list[SyncCompleted] = []
        self._rates = RateWindow()  # the rate's samples of the jobs this tracker recomputes
        self._on_finished = on_finished
        self._closing: set[UUID] = set()  # jobs whose crawl ended: any event may be the last
        self._wake = asyncio.Event()  # an event came
        self._urgent = asyncio.Event()  # an event of a closing job came

    @property
    def dirty(self) -> frozenset[UUID]:
        return frozenset(self._dirty)

    def mark_dirty(self, job_id: UUID, org_id: UUID) -> None:
        self._dirty[job_id] = org_id

    async def on_event(self, event: TrackerEvent) -> None:
        """One decoded event (``shared.consuming.consume`` decodes, parks and settles): mark its
        job dirty, or fail the job now for a ``FetchFailed``, which carries the error to store."""
        if not isinstance(event, FetchFailed):
            self._dirty[event.job_id] = event.org_id
            if isinstance(event, FetchCompleted):
                self._closing.add(event.job_id)
            if event.job_id in self._closing:
                self._urgent.set()
            self._wake.set()
            return
        done = await fail_job(self._pool, event)
        if done is not None:
            log.info("job %s failed: %s", event.job_id, redact(event.error)[:200])
            await self._follow_parents([done])
            await self._announce([done])

    async def flush(self, only: Collection[UUID] | None = None) -> None:
        """Recompute every dirty job (of ``only``, when given) once; jobs that hit an error
        stay dirty for the next tick."""
        if self._unannounced:
            pending, self._unannounced = self._unannounced, []
            await self._announce(pending)
        if only is None:
            jobs, self._dirty = self._dirty, {}
        else:
            jobs = {job: self._dirty.pop(job) for job in list(self._dirty) if job in only}
        finished: list[SyncCompleted] = []
        for job_id, org_id in jobs.items():
            with log_context(job_id=job_id, org_id=org_id):
                try:
                    done = await recompute(for_org(self._pool, org_id), job_id, self._rates)
                except Exception as exc:
                    self._database.failed(exc, f"recomputing job {job_id}")
                    self._dirty[job_id] = org_id
                    continue
                self._database.succeeded()
                if done is not None:
                    log.info(
                        "job %s %s: %d done, %d failed of %d",
                        job_id,
                        done.state,
                        done.done,
                        done.failed,
                        done.total,
                    )
                    finished.append(done)
        self._rates.forget_idle()
        await self._follow_parents(finished)
        await self._announce(finished)

    async def sweep(self) -> None:
        """Mark every job that could still finish as dirty (see the module docstring)."""
        try:
            active = await active_jobs(self._pool)
        except Exception as exc:
            self._database.failed(exc, "sweeping the open jobs")
            return
        self._database.succeeded()
        self._dirty.update(active)
        self._closing.intersection_update(active)  # finished elsewhere, or gone

    async def detect_stalls(self) -> None:
        """Fail every job that stalled (see the module docstring) and announce it."""
        try:
            await self._detect_stalls()
        except Exception as exc:
            self._database.failed(exc, "looking for stalled jobs")

    async def _detect_stalls(self) -> None:
        timeout_s = self._stall_timeout_s
        if timeout_s is None:
            return
        candidates = await self._pool.fetch(q.SELECT_STALL_CANDIDATES, timeout_s)  # every org
        fetchers = 0
        if any(row["state"] == JobState.QUEUED for row in candidates):
            try:
                if self._fetchers_consuming is None:
                    raise LookupError("no way to count fetchers")
                fetchers = await self._fetchers_consuming()
            except Exception as exc:
                log.warning("cannot tell whether fetchers are running (%r); queued jobs wait", exc)
                fetchers = 1
        stalled: list[SyncCompleted] = []
        for row in candidates:
            if row["state"] == JobState.QUEUED and fetchers > 0:
                continue  # waiting for a busy fetcher is not a stall
            with log_context(job_id=row["id"], org_id=row["org_id"]):
                done = await stall_job(for_org(self._pool, row["org_id"]), row["id"], timeout_s)
                if done is not None:
                    log.warning("job %s stalled (no progress for %g s)", done.job_id, timeout_s)
                    stalled.append(done)
        await self._follow_parents(stalled)
        await self._announce(stalled)

    async def _follow_parents(self, finished: list[SyncCompleted]) -> None:
        """Mark the parent of each job that just finished dirty, so a parent ends on the next
        tick after its last child (the full sweep would find it too, a few seconds later)."""
        for done in finished:
            try:
                parent = await for_org(self._pool, done.org_id).fetchval(
                    q.SELECT_PARENT, done.job_id, done.org_id
                )
            except Exception as exc:  # the sweep finds the parent anyway
                self._database.failed(exc, f"reading the parent of job {done.job_id}")
                continue
            if parent is not None:
                self._dirty[parent] = done.org_id

    async def run(self) -> None:
        """The recompute loop; runs until cancelled. Starts with a full sweep."""
        loop = asyncio.get_running_loop()
        next_sweep = next_tick = loop.time()
        while True:
            self._urgent.clear()  # events that come while recomputing count for the next pause
            tick = loop.time() >= next_tick
            try:
                if loop.time() >= next_sweep:
                    await self.sweep()
                    await self.detect_stalls()
                    next_sweep = loop.time() + self._full_sweep_interval_s
                # Between ticks, only the jobs whose crawl ended: the others wait for the tick.
                await self.flush(None if tick else self._closing)
            except Exception:  # the loop outlives any outage; the sweep catches up afterwards
                log.exception("recompute tick failed; trying again on the next one")
            if tick:
                next_tick = loop.time() + self._sweep_interval_s
            next_tick = await self._pause(next_tick, next_sweep)

    async def _pause(self, next_tick: float, next_sweep: float) -> float:
        """Until the next recompute: the tick, or ``URGENT_GAP_S`` when an event of a closing
        job comes; at a tick with nothing to recompute, until the next event (recomputed at
        once) or the full sweep. Returns when the next tick is due."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(min(URGENT_GAP_S, self._sweep_interval_s))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._urgent.wait(), max(0.0, next_tick - loop.time()))
        if self._urgent.is_set() and loop.time() < next_tick:
            return next_tick
        if not self._dirty and not self._unannounced:
            self._wake.clear()  # nothing came that is not recomputed (one loop: no race)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - loop.time()))
            return loop.time()
        return next_tick

    async def drain(self, timeout_s: float) -> None:
        """One last flush at shutdown, so jobs marked dirty by acked events finish promptly."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)

    async def _announce(self, completed: list[SyncCompleted]) -> None:
        for done in completed:
            self._closing.discard(done.job_id)
            if self._on_finished is not None:
                self._on_finished(done.org_id, done.job_id)
        for index, done in enumerate(completed):
            with log_context(job_id=done.job_id, org_id=done.org_id, message_id=done.message_id):
                try:
                    await self._publish(done)
                except Exception:
                    log.exception("publishing sync.completed failed; retrying on the next tick")
                    self._unannounced.extend(completed[index:])
                    return
