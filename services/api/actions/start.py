"""The ``start`` action: test the store, keep its connection and a new job, hand it on.

Database writes happen in one transaction; ``sync.requested`` is published only after that
commit, so the fetcher never sees a job that is not yet visible. A publish that fails leaves a
``draft`` job, which repeating the same request publishes again. A connection with an open job
gets no second one: the answer is that job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.api import queries as q
from services.api.actions.common import (
    Answer,
    crawl_not_stopped,
    hand_to_fetcher,
    preview_running,
    too_many_syncs,
)
from services.api.deps import Deps
from services.api.schemas import StartRequest, StartResult, StoreConfigIn
from services.api.store_probe import check_store
from services.api.urls import progress_url, status_url
from shared import activity
from shared.auth import Caller
from shared.db import for_org
from shared.lifecycle import JobState
from shared.syncstart import insert_sync_job

SUMMARY = "Test the store, then create a job for its customers (or answer with its open job)."
# A start of a connection that already has an open job is answered with that job.
NOTE = (
    "202: a new job was accepted (or this idempotency_key's job is returned); 200 with the "
    "start result: the store connection already had an open job, which is the answer."
)


async def answer(request: StartRequest, caller: Caller, deps: Deps) -> Answer:
    started = await start_sync(request, caller, deps)
    return Answer(started.result, 200 if started.already_running else 202)


def _start_result(deps: Deps, job_id: UUID, org_id: UUID, state: str) -> StartResult:
    return StartResult(
        job_id=job_id,
        state=state,  # type: ignore[arg-type]  # a job state read from the CHECKed column
        status_url=status_url(deps, job_id),
        progress_url=progress_url(deps, job_id, org_id),
    )


@dataclass(frozen=True)
class Started:
    result: StartResult
    # The connection already had an open job, and the answer is that job (no new one).
    already_running: bool = False


async def _existing_job(
    deps: Deps, row: asyncpg.Record, caller: Caller, *, already_running: bool = False
) -> Started:
    """A job that answers this start; published again only if it never was (still a draft)."""
    state = row["state"]
    if state == JobState.DRAFT:
        state = await hand_to_fetcher(
            deps,
            job_id=row["id"],
            org_id=caller.org_id,
            connection_id=row["connection_id"],
            actor=caller.actor(),
        )
    return Started(_start_result(deps, row["id"], caller.org_id, state), already_running)


async def start_sync(request: StartRequest, caller: Caller, deps: Deps) -> Started:
    """Verify the store, store the connection and a new job, and hand the job to the fetcher.

    A connection with an open job gets no second one: the answer is the open job. An org at
    ``max_concurrent_syncs_per_org`` open jobs is refused with 429.
    """
    org_id = caller.org_id
    key = request.options.idempotency_key
    existing: asyncpg.Record | None = None
    if key is not None:
        # A replay answers from the database alone, even if the store is down by now.
        existing = await for_org(deps.pool, org_id).fetchrow(
            q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, key
        )
        if existing is not None:
            return await _existing_job(deps, existing, caller)

    store_total = await check_store(deps, request.config, org_id)

    new_job_id = uuid4()
    running: asyncpg.Record | None = None
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)
        if key is not None:
            # A concurrent request with the same key may have won while the store was checked.
            existing = await conn.fetchrow(q.SELECT_JOB_BY_IDEMPOTENCY_KEY, org_id, key)
        if existing is None:
            connection_id, running = await _open_job_or_new(
                conn, deps, request, caller, new_job_id, store_total
            )
    # Published only after the commit (and with the lock released).
    if existing is not None:
        return await _existing_job(deps, existing, caller)
    if running is not None:
        return await _existing_job(deps, running, caller, already_running=True)
    state = await hand_to_fetcher(
        deps,
        job_id=new_job_id,
        org_id=org_id,
        connection_id=connection_id,
        actor=caller.actor(),
    )
    return Started(_start_result(deps, new_job_id, org_id, state))


async def _open_job_or_new(
    conn: asyncpg.Connection,
    deps: Deps,
    request: StartRequest,
    caller: Caller,
    new_job_id: UUID,
    store_total: int,
) -> tuple[UUID, asyncpg.Record | None]:
    """The connection's id, and its open job if it has one; else the new job is inserted.

    Runs under the org's sync lock, so the count of open jobs stays true until the commit.
    The store's one connection (whatever key reached it before) takes the credentials the store
    has just accepted, also when the start is answered with an open job: that job's next crawl
    (a retry, a redelivery) loads the new key; a crawl already running keeps the key it began
    with until it ends.
    """
    org_id, config, options = caller.org_id, request.config, request.options
    previous = await conn.fetchrow(q.SELECT_CONNECTION_OF_STORE, org_id, config.url)
    connection_id: UUID = await conn.fetchval(
        q.UPSERT_CONNECTION,
        uuid4(),
        org_id,
        config.url,
        config.auth,
        config.verify_tls,
        config.consumer_key,
        deps.secrets.encrypt(config.consumer_secret.get_secret_value()),
    )
    running = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
    if running is not None and running["kind"] == "preview":
        raise preview_running(running["id"])
    if previous is not None:
        job_id = running["id"] if running is not None else new_job_id
        await _record_connection_change(conn, previous, config, org_id, job_id, caller)
    if running is not None:
        await activity.record(
            conn,
            org_id=org_id,
            job_id=running["id"],
            event="job.start_answered_by_open_job",
            details={"connection_id": str(connection_id), **caller.actor()},
        )
        return connection_id, running

    # No open job, but a cancelled one may still be reading the store: wait for it to stop.
    stopping = await conn.fetchval(q.SELECT_OTHER_FETCHING_JOB, org_id, connection_id, new_job_id)
    if stopping is not None:
        raise crawl_not_stopped(stopping)
    limit = deps.settings.max_concurrent_syncs_per_org
    if await conn.fetchval(q.COUNT_OPEN_JOBS, org_id) >= limit:
        raise too_many_syncs(limit)
    batch_size = options.batch_size or deps.settings.default_batch_size
    # None: the fetcher adapts it to the store (shared.storelimit).
    concurrency = options.concurrency
    await insert_sync_job(
        conn,
        job_id=new_job_id,
        org_id=org_id,
        connection_id=connection_id,
        store_url=config.url,
        auth=config.auth,
        verify_tls=config.verify_tls,
        batch_size=batch_size,
        concurrency=concurrency,
        store_total=store_total,
        idempotency_key=options.idempotency_key,
        conflict_policy=options.conflict_policy,
        actor=caller.actor(),
        include_guests=options.include_guests,
    )
    return connection_id, None


def _key_ending(consumer_key: str) -> str:
    # What WooCommerce itself shows of a key (its "truncated_key"): enough to tell keys apart.
    return "…" + consumer_key[-7:]


async def _record_connection_change(
    conn: asyncpg.Connection,
    previous: asyncpg.Record,
    config: StoreConfigIn,
    org_id: UUID,
    job_id: UUID,
    caller: Caller,
) -> None:
    """An activity row when a start changed a stored connection (never its secret)."""
    changes: dict[str, Any] = {}
    if previous["consumer_key"] != config.consumer_key:
        changes["consumer_key"] = [
            _key_ending(previous["consumer_key"]),
            _key_ending(config.consumer_key),
        ]
    if previous["auth_mode"] != config.auth:
        changes["auth"] = [previous["auth_mode"], config.auth]
    if previous["verify_tls"] != config.verify_tls:
        changes["verify_tls"] = [previous["verify_tls"], config.verify_tls]
    if previous["store_url"] != config.url:
        changes["store_url"] = [previous["store_url"], config.url]
    if not changes:
        return  # the same key again: only its secret was refreshed
    # Less protection than before: plain http (http accepts only OAuth 1.0a, which never sends
    # the secret, but the customers travel in clear), or no certificate check.
    downgrade = (
        config.url.startswith("http://") and not previous["store_url"].startswith("http://")
    ) or (previous["verify_tls"] and not config.verify_tls)
    await activity.record(
        conn,
        org_id=org_id,
        job_id=job_id,
        event=(
            "connection.credentials_rotated"
            if "consumer_key" in changes
            else "connection.settings_changed"
        ),
        level="warning" if downgrade else "info",
        details={
            "connection_id": str(previous["id"]),
            "store_url": config.url,
            "changes": changes,
            **caller.actor(),
        },
    )
