"""Starting a sync of a stored connection: what the api's ``start`` and the scheduler share.

Both make a job the same way: under the org's sync lock (so counting open jobs and adding one
cannot interleave), only when the connection has no open job (migration 0002 lets one job read a
store) and the org is below its cap, as a ``draft`` with a ``job.created`` audit row; then, after
the commit, :func:`hand_to_fetcher` publishes ``sync.requested`` with a confirm and marks the
job ``queued``. The job names only its connection: the fetcher loads the connection's current
key when it takes the job, so a key stored between two scheduled fires is the one the next
fire uses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal
from uuid import UUID

import asyncpg

from shared import activity
from shared.db import for_org
from shared.lifecycle import OPEN_JOB_STATES, Actor, JobState, changes_state, moves, sql_in
from shared.lifecycle import sql_state as _state
from shared.logs import log_context
from shared.messages import Message, SyncRequested

log = logging.getLogger("woosync.jobs")

Publish = Callable[[list[Message]], Awaitable[None]]

# Serialises what makes an org's jobs open (start, a scheduled fire, and a retry of a finished
# job) until the transaction ends, so that counting open jobs and adding one cannot interleave.
# The two-key form has its own key space, apart from the migrator's single-key lock.
LOCK_ORG_SYNCS = "SELECT pg_advisory_xact_lock(7428103, hashtext($1::uuid::text))"

# The oldest open job of a connection: a second start answers with it, a fire is skipped.
SELECT_OPEN_JOB_OF_CONNECTION = f"""
SELECT id, connection_id, state, kind
FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND state IN {sql_in(OPEN_JOB_STATES)}
ORDER BY created_at
LIMIT 1
"""

# A parent job (kind 'orchestration', no connection) reads no store: only its children count.
COUNT_OPEN_JOBS = f"""
SELECT count(*) FROM woo_customer_sync_queue
WHERE org_id = $1 AND state IN {sql_in(OPEN_JOB_STATES)} AND connection_id IS NOT NULL
"""

# No row back means the idempotency key is taken, or the connection has a job reading its
# store (migration 0002's unique index): the caller then loads that job instead. Under
# LOCK_ORG_SYNCS neither can happen; this is the database's own guarantee behind it.
INSERT_JOB = changes_state(
    "jobs.INSERT_JOB",
    "job",
    {
        Actor.API_START: moves((None,), (JobState.DRAFT,)),
        Actor.SCHEDULER: moves((None,), (JobState.DRAFT,)),
    },
    f"""
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, idempotency_key, batch_size, concurrency, store_total)
VALUES ($1, $2, $3, {_state(JobState.DRAFT)}, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING id
""",
)

# A start's own conflict policy for its new job (null: the connection's, shared.conflicts).
SET_JOB_CONFLICT_POLICY = """
UPDATE woo_customer_sync_queue SET conflict_policy = $3 WHERE id = $1 AND org_id = $2
"""

# $4: a start's include_guests (null: keep the connection's). The connection keeps the setting;
# the new job takes the connection's value, fixed for its whole run (migration 0021).
SET_JOB_INCLUDE_GUESTS = """
WITH c AS (
    UPDATE woo_connections SET include_guests = coalesce($4, include_guests)
    WHERE id = $3 AND org_id = $2
    RETURNING include_guests
)
UPDATE woo_customer_sync_queue j SET include_guests = c.include_guests
FROM c
WHERE j.id = $1 AND j.org_id = $2
RETURNING j.include_guests
"""

# Another job of the connection that has not read all its pages (holds migration 0002's slot):
# an open one, or a cancelled one whose crawl has not stopped yet.
SELECT_OTHER_FETCHING_JOB = f"""
SELECT id FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND id <> $3 AND fetch_done_at IS NULL
  AND (state IN {sql_in(OPEN_JOB_STATES)}
       OR (state = {_state(JobState.CANCELLED)} AND crawl_stopped_at IS NULL))
LIMIT 1
"""

# Held while sync.requested is published, so a draft is handed to the fetcher once.
LOCK_JOB_STATE = """
SELECT state FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR UPDATE
"""

# The job is locked (LOCK_JOB_STATE) and a draft: the fetcher cannot have taken it further.
MARK_QUEUED = changes_state(
    "jobs.MARK_QUEUED",
    "job",
    {
        Actor.API_START: moves((JobState.DRAFT,), (JobState.QUEUED,)),
        Actor.API_RETRY: moves((JobState.DRAFT,), (JobState.QUEUED,)),
        Actor.SCHEDULER: moves((JobState.DRAFT,), (JobState.QUEUED,)),
        Actor.API_ORCHESTRATE: moves((JobState.DRAFT,), (JobState.QUEUED,)),
    },
    f"""
UPDATE woo_customer_sync_queue
SET state = {_state(JobState.QUEUED)}, queued_at = now(), updated_at = now()
WHERE id = $1 AND org_id = $2 AND state = {_state(JobState.DRAFT)}
""",
)


async def insert_sync_job(
    conn: asyncpg.Connection,
    *,
    job_id: UUID,
    org_id: UUID,
    connection_id: UUID,
    store_url: str,
    auth: str,
    verify_tls: bool,
    batch_size: int,
    concurrency: int | None,
    store_total: int | None,
    idempotency_key: str | None,
    actor: Mapping[str, Any],
    conflict_policy: str | None = None,
    include_guests: bool | None = None,
) -> bool:
    """A draft job for the connection and its ``job.created`` row, in the caller's transaction;
    whether the job reads the store's guest buyers too.

    The caller holds :data:`LOCK_ORG_SYNCS` and has found no open job of the connection and the
    org below its cap. ``concurrency`` None: the fetcher adapts it to the store
    (``shared.storelimit``); ``conflict_policy`` None: the connection's (``shared.conflicts``);
    ``include_guests`` None: the connection's setting (migration 0021).
    """
    inserted = await conn.fetchval(
        INSERT_JOB,
        job_id,
        org_id,
        connection_id,
        idempotency_key,
        batch_size,
        concurrency,
        store_total,
    )
    if inserted is None:  # the lock makes this unreachable; never make a second job
        raise RuntimeError("a job insert conflicted while holding the org's sync lock")
    if conflict_policy is not None:
        await conn.execute(SET_JOB_CONFLICT_POLICY, job_id, org_id, conflict_policy)
    guests: bool = await conn.fetchval(
        SET_JOB_INCLUDE_GUESTS, job_id, org_id, connection_id, include_guests
    )
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event="job.created",
        details={
            "connection_id": str(connection_id),
            "store_url": store_url,
            "auth": auth,
            "verify_tls": verify_tls,
            "batch_size": batch_size,
            "concurrency": concurrency,
            "store_total": store_total,
            "idempotency_key": idempotency_key,
            "conflict_policy": conflict_policy,
            "include_guests": guests,
            **actor,
        },
    )
    return guests


async def hand_to_fetcher(
    pool: asyncpg.Pool,
    publish: Publish,
    *,
    job_id: UUID,
    org_id: UUID,
    connection_id: UUID,
    actor: Mapping[str, Any],
    reason: Literal["start", "retry"] = "start",
) -> str:
    """Publish ``sync.requested`` for a draft job and mark it queued; its state afterwards.

    The job's row stays locked from the read of its state to the commit of ``queued``, so two
    callers that both find the draft (a start answered with the open job while the start that
    made it is still publishing; a fire finding a draft left by a failed publish) publish it
    once: the second sees ``queued`` and sends nothing. When ``publish`` raises, the job stays a
    draft, ``job.publish_failed`` is recorded and the error goes to the caller.
    """
    message = SyncRequested(
        job_id=job_id, org_id=org_id, connection_id=connection_id, reason=reason
    )
    with log_context(job_id=job_id, org_id=org_id, message_id=message.message_id):
        publish_failed = False
        try:
            async with for_org(pool, org_id).transaction() as conn:
                state: str = await conn.fetchval(LOCK_JOB_STATE, job_id, org_id)
                if state != JobState.DRAFT:
                    return state
                try:
                    await publish([message])
                except Exception:
                    publish_failed = True
                    raise
                await conn.execute(MARK_QUEUED, job_id, org_id)
                await activity.record(
                    conn,
                    org_id=org_id,
                    job_id=job_id,
                    event="job.queued",
                    details={"reason": reason, **actor},
                )
        except Exception:
            if publish_failed:
                await activity.record(
                    for_org(pool, org_id),
                    org_id=org_id,
                    job_id=job_id,
                    event="job.publish_failed",
                    level="warning",
                    details={"message": "sync.requested", "reason": reason, **actor},
                )
            raise
        log.info("job %s queued for the fetcher (%s)", job_id, reason)
        return JobState.QUEUED
