"""Dead-letter replay: list the parking queues and move parked customer batches back to the syncer.

Two ways in, one for each audience:

* ``woosync dlq list|replay`` (the operator, across orgs) reads the parking queue itself, below.
* The api's ``replay`` action (one org) never opens a parking queue: it replays from PostgreSQL
  (``replay_job_from_lines``). The syncer records every customer it parks as a ``failed`` line
  that keeps the customer's payload, so the lines are the org's own record of what is parked.
  Reading the shared queue instead would take, hold and requeue every other org's parked messages
  for the length of the scan (a requeue counts as a delivery on a quorum queue) and make one
  org's replay wait behind another's. The parked copies of what the api replayed stay in the
  parking queue for the operator; replaying them again is a harmless duplicate (the syncer never
  touches a ``done`` line). ``rejected`` batches (no line records them) are the operator's.

Replay (at-least-once, idempotent)
----------------------------------
For the matching ``parked`` and ``rejected`` batches whose job exists (for the batch's org and
connection), in this order:

1. one transaction: their ``failed`` lines go back to ``pending`` and, if some did, their job,
   if it ``failed`` after every page was read, back to ``processing``; without this the tracker,
   which finishes only open jobs, would leave the job ``failed`` after its customers are synced.
   A failed job none of whose lines is failed or open any more (its batches were moved back
   another way, say with the console's "Move messages") is re-opened too, so the tracker can
   finish it as ``done``.
2. each batch is published, persistent and confirmed, to the work queue with the ``parked-*``,
   ``retry-attempt`` and broker ``x-*`` headers removed (so it starts again at attempt 0), and only
   then is the parked copy acked. A crash in between leaves a duplicate, which the syncer makes
   harmless (unchanged customers are not written again; ``done`` lines are never touched).
3. a ``dlq.replayed`` activity row per job says how many messages and customers went back.

A crash after step 1 leaves the job ``processing`` with pending lines and the batches still
parked; running the replay again finishes the work. Messages that do not match, are malformed, or
name a job that does not exist stay parked, in their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from shared import messages as m
from shared.db import for_org
from shared.lifecycle import (
    Actor,
    JobState,
    LineState,
    changes_state,
    moves,
    reopen_jobs,
    sql_state,
)
from shared.messages import CustomerBatch
from shared.parked import describe, matches, woo_id
from shared.parking import (
    DEFAULT_LIMIT,
    DEFAULT_TIMEOUT_S,
    give_back,
    parking_queue,
    replay_headers,
    take_all,
)
from shared.topology import Topology

# $1: jsonb array of {job_id, org_id} named by the batches. Only jobs that exist for that org
# (what the syncer itself requires; it writes to the job's connection), locked so that a concurrent
# retry, force-done or replay of the same job waits for this one.
LOCK_REPLAYABLE_JOBS = """
SELECT j.id, j.org_id, j.state
FROM woo_customer_sync_queue AS j
JOIN (SELECT DISTINCT * FROM jsonb_to_recordset($1::jsonb)
          AS x(job_id uuid, org_id uuid)) AS x
  ON j.id = x.job_id AND j.org_id = x.org_id
ORDER BY j.id
FOR UPDATE OF j
"""

# $1: jsonb array of {job_id, org_id, woo_id}. Failed lines of the replayed customers are open
# again, so the tracker cannot finish their job before the syncer has settled them. Lines in any
# other state (done, or already pending) are left alone, which makes a second replay a no-op.
REOPEN_LINES = changes_state(
    "replay.REOPEN_LINES",
    "line",
    {Actor.REPLAY: moves((LineState.FAILED,), (LineState.PENDING,))},
    f"""
UPDATE woo_customer_sync_queue_line AS l
SET state = {sql_state(LineState.PENDING)}, attempts = 0, last_error = NULL, updated_at = now()
FROM (SELECT DISTINCT * FROM jsonb_to_recordset($1::jsonb)
          AS x(job_id uuid, org_id uuid, woo_id bigint)) AS x
WHERE l.job_id = x.job_id AND l.woo_id = x.woo_id AND l.org_id = x.org_id
  AND l.state = {sql_state(LineState.FAILED)}
RETURNING l.job_id
""",
)

# $1 uuid, $2 uuid: the one job the caller named, if it exists for that org.
SELECT_JOB = """
SELECT id, org_id, state FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR UPDATE
"""

SELECT_JOB_ANY_ORG = """
SELECT id, org_id, state FROM woo_customer_sync_queue WHERE id = $1 FOR UPDATE
"""

# $1 uuid, $2 uuid: the job an org replays, locked like LOCK_REPLAYABLE_JOBS does.
SELECT_JOB_TO_REPLAY = """
SELECT id, org_id, state, connection_id, batch_size
FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR UPDATE
"""

# $1 job, $2 org: the job's parked customers, from their lines. Failed lines that kept their
# payload (what the syncer parked) go back to pending; pending lines that still keep a payload
# (re-opened by a replay or retry whose publish may not have happened) are sent again too.
REQUEUE_PARKED_LINES = changes_state(
    "replay.REQUEUE_PARKED_LINES",
    "line",
    {Actor.REPLAY: moves((LineState.FAILED,), (LineState.PENDING,))},
    f"""
WITH reopened AS (
    UPDATE woo_customer_sync_queue_line
    SET state = {sql_state(LineState.PENDING)}, attempts = 0, last_error = NULL, updated_at = now()
    WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.FAILED)}
      AND payload IS NOT NULL
    RETURNING woo_id, payload
)
SELECT woo_id, payload, true AS reopened FROM reopened
UNION ALL
SELECT woo_id, payload, false FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.PENDING)}
  AND payload IS NOT NULL
ORDER BY woo_id
""",
)

# $1: jsonb array of {job_id, org_id, details}: one audit row per job, in one statement.
INSERT_REPLAYED_ACTIVITY = """
INSERT INTO woo_sync_activity (job_id, org_id, level, event, details)
SELECT x.job_id, x.org_id, 'info', 'dlq.replayed', x.details
FROM jsonb_to_recordset($1::jsonb) AS x(job_id uuid, org_id uuid, details jsonb)
"""


@dataclass(frozen=True)
class ReplayReport:
    work_queue: str
    replayed: int = 0  # messages moved to the work queue
    customers: int = 0  # customers in those messages
    lines_reopened: int = 0  # failed lines made pending again
    jobs_reopened: tuple[UUID, ...] = ()
    kept: int = 0  # matching messages left parked: malformed, or their job does not exist
    skipped: int = 0  # messages of other jobs or orgs, left parked
    more: bool = False  # the scan stopped at its limit; run again for the rest
    by_job: dict[UUID, int] = field(default_factory=dict)


async def replay(
    connection: AbstractConnection,
    pool: asyncpg.Pool,
    topology: Topology,
    *,
    job_id: UUID | None = None,
    org_id: UUID | None = None,
    actor: Mapping[str, Any] | None = None,
    limit: int = DEFAULT_LIMIT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ReplayReport:
    """Move the syncer's parked batches (of ``job_id`` / ``org_id`` if given) back to its work
    queue and re-open their lines and jobs; see the module docstring. ``actor`` goes into the
    ``dlq.replayed`` activity rows (who asked)."""
    parking = parking_queue(topology, "syncer")
    work = topology.syncer_queue.name
    async with asyncio.timeout(timeout_s):
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            held, more = await take_all(channel, parking, limit)
            keep: list[AbstractIncomingMessage] = []
            try:
                report = await _replay_held(
                    channel,
                    pool,
                    held,
                    keep,
                    work=work,
                    job_id=job_id,
                    org_id=org_id,
                    actor=actor or {},
                )
            finally:
                await give_back(keep)
        finally:
            await channel.close()
    return replace(report, more=more)


async def _replay_held(
    channel: AbstractChannel,
    pool: asyncpg.Pool,
    held: list[AbstractIncomingMessage],
    keep: list[AbstractIncomingMessage],
    *,
    work: str,
    job_id: UUID | None,
    org_id: UUID | None,
    actor: Mapping[str, Any],
) -> ReplayReport:
    """Steps 1 to 3 for the held messages; every message not acked ends up in ``keep``."""
    chosen: list[tuple[AbstractIncomingMessage, m.CustomerBatch]] = []
    kept = skipped = 0
    for message in held:
        info, parsed = describe(message.body, message.headers, message.message_id)
        if not matches(info, job_id, org_id) or not isinstance(parsed, m.CustomerBatch):
            keep.append(message)
            if info.kind == "malformed":
                kept += 1
            else:
                skipped += 1
            continue
        chosen.append((message, parsed))

    jobs, lines_reopened, reopened = await _reopen(pool, [b for _, b in chosen], job_id, org_id)
    replayed: list[tuple[AbstractIncomingMessage, m.CustomerBatch]] = []
    for index, (message, batch) in enumerate(chosen):
        if batch.job_id not in jobs:
            keep.append(message)
            kept += 1
            continue
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    message.body,
                    headers=replay_headers(message.headers),
                    content_type=message.content_type or "application/json",
                    message_id=message.message_id or str(batch.message_id),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=work,
                mandatory=True,
            )
        except BaseException:
            keep.extend(msg for msg, _ in chosen[index:])
            raise
        await message.ack()
        replayed.append((message, batch))

    by_job: dict[UUID, int] = {}
    customers_by_job: dict[UUID, int] = {}
    for _, batch in replayed:
        by_job[batch.job_id] = by_job.get(batch.job_id, 0) + 1
        customers_by_job[batch.job_id] = customers_by_job.get(batch.job_id, 0) + len(
            batch.customers
        )
    rows = [
        {
            "job_id": str(job),
            "org_id": str(jobs[job]["org_id"]),
            "details": {
                "messages": by_job.get(job, 0),
                "customers": customers_by_job.get(job, 0),
                "lines_reopened": lines_reopened.get(job, 0),
                "job_reopened": job in reopened,
                "previous_state": jobs[job]["state"],
                **actor,
            },
        }
        for job in sorted(jobs, key=str)
        if by_job.get(job) or job in reopened
    ]
    if rows:
        async with _transaction(pool, org_id) as conn:
            await conn.execute(INSERT_REPLAYED_ACTIVITY, rows)
    return ReplayReport(
        work_queue=work,
        replayed=len(replayed),
        customers=sum(customers_by_job.values()),
        lines_reopened=sum(lines_reopened.values()),
        jobs_reopened=tuple(sorted(reopened, key=str)),
        kept=kept,
        skipped=skipped,
        by_job=by_job,
    )


@asynccontextmanager
async def _transaction(
    pool: asyncpg.Pool, org_id: UUID | None
) -> AsyncIterator[asyncpg.Connection]:
    """The api replays for one org, under that org's row-level security. The operator's CLI
    replays across orgs and connects as the schema's owner, whom the policies do not bind; a
    service role without an org would see no job and re-open nothing."""
    if org_id is not None:
        async with for_org(pool, org_id).transaction() as conn:
            yield conn
        return
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def _reopen(
    pool: asyncpg.Pool,
    batches: Sequence[m.CustomerBatch],
    job_id: UUID | None,
    org_id: UUID | None,
) -> tuple[dict[UUID, asyncpg.Record], dict[UUID, int], set[UUID]]:
    """Step 1, one transaction: the existing jobs (by id), lines re-opened per job, jobs
    re-opened. The job named by ``job_id`` is considered even when nothing of it is parked."""
    named = [{"job_id": str(b.job_id), "org_id": str(b.org_id)} for b in batches]
    async with _transaction(pool, org_id) as conn:
        jobs = {r["id"]: r for r in await conn.fetch(LOCK_REPLAYABLE_JOBS, named)}
        if job_id is not None and job_id not in jobs:
            if org_id is not None:
                row = await conn.fetchrow(SELECT_JOB, job_id, org_id)
            else:
                row = await conn.fetchrow(SELECT_JOB_ANY_ORG, job_id)
            if row is not None:
                jobs[row["id"]] = row
        lines = [
            {"job_id": str(b.job_id), "org_id": str(b.org_id), "woo_id": w}
            for b in batches
            if b.job_id in jobs
            for w in (woo_id(c) for c in b.customers)
            if w is not None
        ]
        reopened_lines: dict[UUID, int] = {}
        if lines:
            for row in await conn.fetch(REOPEN_LINES, lines):
                reopened_lines[row["job_id"]] = reopened_lines.get(row["job_id"], 0) + 1
        reopened = await _reopen_jobs(
            conn, [(job, jobs[job]["org_id"]) for job in jobs], reopened_lines
        )
    return jobs, reopened_lines, reopened


async def _reopen_jobs(
    conn: asyncpg.Connection, jobs: Sequence[tuple[UUID, UUID]], lines_reopened: Iterable[UUID]
) -> set[UUID]:
    """A replay's re-open (jobs already checked against their org): a job that failed after
    every page was read failed because of its lines (a fetch failure never sets fetch_done_at);
    it re-opens when this replay re-opened some of its lines, or when none of its lines is failed
    or open any more (they were moved back another way). The tracker finishes it again later."""
    return await reopen_jobs(
        conn,
        Actor.REPLAY,
        jobs,
        to=JobState.PROCESSING,
        leaving=[JobState.FAILED],
        whatever_lines=list(lines_reopened),
        only_fetched=True,
    )


Publish = Callable[[Sequence[CustomerBatch]], Awaitable[None]]


async def replay_job_from_lines(
    pool: asyncpg.Pool,
    publish: Publish,
    *,
    org_id: UUID,
    job_id: UUID,
    work_queue: str,
    actor: Mapping[str, Any] | None = None,
) -> ReplayReport | None:
    """One org's replay of one job, from PostgreSQL alone (see the module docstring): its parked
    customers go back to the syncer in batches of the job's size, their lines become pending, and
    the job re-opens as ``replay`` does. None when the org has no such job.

    The lines and the job change in one transaction under the org's row-level security, and the
    batches are published (confirmed) after it commits: a failed publish leaves pending lines that
    keep their payload, which the next replay sends again.
    """
    async with for_org(pool, org_id).transaction() as conn:
        job = await conn.fetchrow(SELECT_JOB_TO_REPLAY, job_id, org_id)
        if job is None:
            return None
        lines = await conn.fetch(REQUEUE_PARKED_LINES, job_id, org_id)
        reopened_lines = sum(1 for line in lines if line["reopened"])
        job_reopened = bool(
            await _reopen_jobs(conn, [(job_id, org_id)], [job_id] if reopened_lines else [])
        )
        customers = [line["payload"] for line in lines]
        size = job["batch_size"]
        batches = [
            CustomerBatch(
                job_id=job_id,
                org_id=org_id,
                connection_id=job["connection_id"],
                page=None,
                customers=customers[start : start + size],
            )
            for start in range(0, len(customers), size)
        ]
        if batches or job_reopened:
            details = {
                "messages": len(batches),
                "customers": len(customers),
                "lines_reopened": reopened_lines,
                "job_reopened": job_reopened,
                "previous_state": job["state"],
                "source": "lines",
                **(actor or {}),
            }
            row = {"job_id": str(job_id), "org_id": str(org_id), "details": details}
            await conn.execute(INSERT_REPLAYED_ACTIVITY, [row])
    if batches:
        await publish(batches)
    return ReplayReport(
        work_queue=work_queue,
        replayed=len(batches),
        customers=len(customers),
        lines_reopened=reopened_lines,
        jobs_reopened=(job_id,) if job_reopened else (),
        by_job={job_id: len(batches)} if batches else {},
    )
