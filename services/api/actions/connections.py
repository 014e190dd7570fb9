"""An org's store connections as things its users manage: list, show, new credentials, delete.

The api's routes (``services.api.app``) parse the request and call these with the caller's org,
who acts (for the activity log) and explicit deps; the operator's ``woosync connections`` calls
the same functions. Like the sync actions: a connection of another org answers 404 as a missing
one does; bad input is refused before anything changes; every change writes an activity row
naming who made it; no answer or activity row carries a secret (the consumer key only by its
last characters).

* New credentials are tested against the store first, as a ``start`` tests them: a store that
  refuses them (or cannot be reached) answers 422 and the stored ones stay. A job reading the
  store keeps the key it began with; its next crawl (a retry, a redelivery) loads the new one.
* Deleting a connection is refused (409) while one of its jobs is open (or cancelled with its
  crawl not yet stopped). Its finished jobs go
  with it (their lines and pages too; their activity rows stay). Its customers are removed with
  ``with_customers=true``; otherwise they stay as they are, detached: their ``connection_id``
  names no connection, and a new connection to the same store (a later ``start``) gets a new id
  and its own rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from services.api import queries as q
from services.api.errors import ApiError, describe_validation_error
from services.api.schemas import (
    ConnectionDeleted,
    ConnectionList,
    ConnectionOut,
    ConnectionUpdate,
    StoreConfigIn,
)
from services.api.store_probe import ProbeDeps, check_store
from shared import activity
from shared.conflicts import MARK_WOOSYNC_WRITER
from shared.crypto import SecretBox
from shared.db import for_org

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_CURSOR_LENGTH = 2048


class ConnectionDeps(ProbeDeps, Protocol):
    """What these need (``services.api.deps.Deps`` has it; so has the operator's command)."""

    @property
    def pool(self) -> asyncpg.Pool: ...
    @property
    def secrets(self) -> SecretBox: ...


Actor = Mapping[str, str]  # who acts, for activity rows: Caller.actor(), or the operator


def connection_not_found() -> ApiError:
    # The same answer for a missing connection and another org's: ids are not probeable.
    return ApiError(404, "connection_not_found", "no such store connection")


def connection_has_open_job(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "connection_busy",
        f"job {job_id} of this store connection is open; wait until it has finished "
        "(or force it done), then delete the connection",
    )


def crawl_still_running(job_id: UUID) -> ApiError:
    return ApiError(
        409,
        "crawl_not_stopped",
        f"job {job_id} of this store connection was cancelled and its crawl has not stopped "
        "yet; delete the connection in a few seconds",
        headers={"Retry-After": "5"},
    )


def _out(row: asyncpg.Record) -> ConnectionOut:
    return ConnectionOut(
        connection_id=row["id"],
        store_url=row["store_url"],
        auth=row["auth_mode"],
        verify_tls=row["verify_tls"],
        consumer_key_ending=row["consumer_key_ending"],
        has_secret=row["has_secret"],
        customers=row["customers"],
        customers_deleted=row["customers_deleted"],
        open_job_id=row["open_job_id"],
        last_job_id=row["last_job_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def list_connections(
    org_id: UUID,
    deps: ConnectionDeps,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> ConnectionList:
    """A page of the caller's org's connections, in the order of their store."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ApiError(422, "invalid_request", f"limit: must be between 1 and {MAX_PAGE_SIZE}")
    if cursor is not None and (not 1 <= len(cursor) <= MAX_CURSOR_LENGTH or "\x00" in cursor):
        raise ApiError(422, "invalid_request", "cursor: not a cursor this api gave out")
    rows = await for_org(deps.pool, org_id).fetch(q.LIST_CONNECTIONS, org_id, cursor, limit + 1)
    page = rows[:limit]
    more = len(rows) > limit
    return ConnectionList(
        connections=[_out(row) for row in page],
        next_cursor=page[-1]["store_identity"] if more else None,
    )


async def show_connection(org_id: UUID, deps: ConnectionDeps, connection_id: UUID) -> ConnectionOut:
    row = await for_org(deps.pool, org_id).fetchrow(q.SELECT_CONNECTION, org_id, connection_id)
    if row is None:
        raise connection_not_found()
    return _out(row)


def parse_update(payload: dict[str, Any]) -> ConnectionUpdate:
    try:
        return ConnectionUpdate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation_error(exc)) from None


def _key_ending(consumer_key: str) -> str:
    return "…" + consumer_key[-4:]


async def update_credentials(
    org_id: UUID,
    actor: Actor,
    deps: ConnectionDeps,
    connection_id: UUID,
    update: ConnectionUpdate,
) -> ConnectionOut:
    """Test the new credentials against the connection's store, then store them (secret
    encrypted); 422 from the store test changes nothing."""
    scope = for_org(deps.pool, org_id)
    stored = await scope.fetchrow(q.SELECT_CONNECTION, org_id, connection_id)
    if stored is None:
        raise connection_not_found()
    try:
        config = StoreConfigIn(
            url=stored["store_url"],
            consumer_key=update.consumer_key,
            consumer_secret=update.consumer_secret,
            auth=update.auth or stored["auth_mode"],
            verify_tls=stored["verify_tls"] if update.verify_tls is None else update.verify_tls,
        )
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe_validation_error(exc)) from None
    await check_store(deps, config, org_id)

    async with scope.transaction() as conn:
        previous = await conn.fetchrow(q.LOCK_CONNECTION, org_id, connection_id)
        if previous is None:  # deleted while its store was tested
            raise connection_not_found()
        await conn.execute(
            q.UPDATE_CONNECTION_CREDENTIALS,
            org_id,
            connection_id,
            config.auth,
            config.verify_tls,
            config.consumer_key,
            deps.secrets.encrypt(config.consumer_secret.get_secret_value()),
        )
        changes: dict[str, Any] = {"consumer_secret": "replaced"}
        if previous["consumer_key"] != config.consumer_key:
            changes["consumer_key"] = [
                _key_ending(previous["consumer_key"]),
                _key_ending(config.consumer_key),
            ]
        if previous["auth_mode"] != config.auth:
            changes["auth"] = [previous["auth_mode"], config.auth]
        if previous["verify_tls"] != config.verify_tls:
            changes["verify_tls"] = [previous["verify_tls"], config.verify_tls]
        await activity.record(
            conn,
            org_id=org_id,
            job_id=None,
            event="connection.credentials_updated",
            # Less protection than before: no certificate check.
            level="warning" if previous["verify_tls"] and not config.verify_tls else "info",
            details={
                "connection_id": str(connection_id),
                "store_url": previous["store_url"],
                "changes": changes,
                **actor,
            },
        )
    return await show_connection(org_id, deps, connection_id)


def parse_with_customers(value: str | None) -> bool:
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise ApiError(422, "invalid_request", "with_customers: must be true or false")


async def delete_connection(
    org_id: UUID,
    actor: Actor,
    deps: ConnectionDeps,
    connection_id: UUID,
    *,
    with_customers: bool,
) -> ConnectionDeleted:
    """Delete the connection and its finished jobs, and its customers if asked; 409 while a job
    of it is open. Under the org's sync lock, so no start or retry opens a job meanwhile."""
    async with for_org(deps.pool, org_id).transaction() as conn:
        await conn.execute(q.LOCK_ORG_SYNCS, org_id)
        # Customers kept lose their connection: woosync's write, not a MantisNXT edit (0017).
        await conn.execute(MARK_WOOSYNC_WRITER)
        row = await conn.fetchrow(q.LOCK_CONNECTION, org_id, connection_id)
        if row is None:
            raise connection_not_found()
        open_job = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
        if open_job is not None:
            raise connection_has_open_job(open_job["id"])
        stopping = await conn.fetchval(q.SELECT_STOPPING_JOB_OF_CONNECTION, org_id, connection_id)
        if stopping is not None:
            raise crawl_still_running(stopping)
        removed = 0
        if with_customers:
            removed = await conn.fetchval(q.DELETE_CONNECTION_CUSTOMERS, org_id, connection_id)
        kept = await conn.fetchval(q.COUNT_CONNECTION_CUSTOMERS, org_id, connection_id)
        jobs = await conn.fetchval(q.DELETE_CONNECTION_JOBS, org_id, connection_id)
        try:
            async with conn.transaction():
                await conn.execute(q.DELETE_CONNECTION, org_id, connection_id)
        except asyncpg.ForeignKeyViolationError:  # a job was opened without the org's lock
            reopened = await conn.fetchrow(q.SELECT_OPEN_JOB_OF_CONNECTION, org_id, connection_id)
            raise connection_has_open_job(reopened["id"] if reopened else connection_id) from None
        result = ConnectionDeleted(
            connection_id=connection_id,
            store_url=row["store_url"],
            with_customers=with_customers,
            customers_deleted=removed,
            customers_kept=kept,
            jobs_deleted=jobs,
        )
        await activity.record(
            conn,
            org_id=org_id,
            job_id=None,
            event="connection.deleted",
            level="warning",
            details={**result.model_dump(mode="json"), **actor},
        )
    return result
