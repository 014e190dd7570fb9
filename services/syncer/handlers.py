"""The syncer's core: map a batch, upsert it with its line states in one transaction, and say what
to publish. No broker here, so tests drive it with a real database and plain arguments.

Attempts and parking
--------------------
A failure that retrying cannot fix is not retried: a customer the mapping refuses
(``MappingError``: a lone surrogate, nesting past ``MAX_JSON_DEPTH``, no usable id, a wrong
type) or whose values PostgreSQL refuses (``DATA_ERRORS``: a data exception, a constraint, a
program limit) is parked at once, on the delivery that found it: its line becomes ``failed``
with ``attempts`` 1 (for a first delivery) and an error that ends with
:data:`NOT_RETRYABLE`. Only a failure that could pass later goes through the retry tiers: today
a customer row locked by another transaction for longer than ``lock_timeout_ms``
(``RETRYABLE_ROW_ERRORS``).

``attempt`` is how many times these customers have already failed: 0 on the first delivery of a
batch, then the ``retry-attempt`` header (``shared.topology.ATTEMPT_HEADER``) of a batch
re-published by a retry tier. With ``max_attempts = len(retry tiers)`` (3 by default), a
retryable failure goes:

========  ==========================================  ===========================
attempt   customers that fail again go to              with header
========  ==========================================  ===========================
0         retry tier 0 (200 ms in tests, 5 s default)   ``retry-attempt: 1``
1         retry tier 1 (400 ms / 30 s)                  ``retry-attempt: 2``
2         retry tier 2 (800 ms / 120 s)                 ``retry-attempt: 3``
3         the parking queue, line ``failed``            ``parked-attempts: 4``
========  ==========================================  ===========================

``parked-attempts`` and ``LineFailure.attempts`` give the deliveries made in all. Each retry
batch carries only the customers that failed; the good ones of a batch are committed on the
first delivery.

While retries remain, a failed line is ``processing`` with ``last_error`` set (not failed yet, so
the job cannot finish early); once parked it is ``failed`` with ``payload`` = the customer as
sent, which is what an operator's retry re-publishes. A customer without a usable ``id`` has no
line: it is parked, but the tracker never hears of it.

Done, with a warning
--------------------
A customer stored with its NUL characters removed, or a payload older than the stored version
(``date_modified_gmt`` before the stored one: a replay or late retry) which is left alone, still
makes its line ``done``; the line's ``warning`` says which (``NUL characters removed from
first_name``, ``stale payload: ...``).

Paused and cancelled jobs
------------------------
A batch of a paused job is not written: it is kept as it came, with its attempt, in
``woo_customer_sync_hold`` and the delivery acked (so it spends no redelivery and holds no queue
up); ``resume`` publishes the held batches again. A batch of a cancelled job is not written
either: its open lines are settled as ``cancelled``. The job's state is read under a lock that
a pause or cancel waits for, so no batch is written after either has answered.

Conflicts
---------
A customer edited in MantisNXT since its last sync whose store version changed too is a conflict
(``shared.conflicts``), settled by the job's policy in the same transaction: the store's version
is upserted (``woo_wins``, a newer store version under ``newest_wins``), MantisNXT's row is kept
and the store version recorded as seen (``mantis_wins``, a newer MantisNXT edit under
``newest_wins``), both with a ``conflict (...)`` warning on the done line; or (``manual``)
nothing is written and the line waits as ``conflict`` with the store's customer and MantisNXT's
row, which the tracker counts and which keeps the job open until the api resolves it. The
transaction names woosync as the writer, so the trigger of migration 0017 does not take these
writes for MantisNXT edits. An edit committed between the read of the edited rows and the upsert
is not seen (as before conflicts existed); it is seen by the next sync if the store changes again.

Failures
--------
If the batch upsert is refused by PostgreSQL for a row's sake, the batch is bisected inside
savepoints until the bad customers are alone; the rest commit. Anything else (connection lost,
pool closed, deadlock) is raised, so the edge requeues the whole delivery, which is safe:
unchanged customers write nothing and ``done`` lines are never touched again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

import asyncpg

from services.syncer import queries as q
from shared import activity, conflicts
from shared.conflicts import DEFAULT_POLICY, ConflictPolicy, Outcome, StoredVersion, decide
from shared.conflicts import warning as conflict_warning
from shared.db import for_org
from shared.lifecycle import JobState, LineState
from shared.mapping import (
    CustomerRow,
    MappingError,
    jsonb_storable,
    map_customer,
)
from shared.messages import CustomerBatch, LineFailure, LinesDone, LinesFailed
from shared.topology import ATTEMPT_HEADER

log = logging.getLogger("woosync.syncer")

# Errors about the values of a row: bisecting the batch isolates the customers behind them, and
# the same values would be refused again, so they are not retried.
DATA_ERRORS: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# Errors about one row that may pass later: isolated the same way, then sent to a retry tier.
RETRYABLE_ROW_ERRORS: tuple[type[asyncpg.PostgresError], ...] = (asyncpg.LockNotAvailableError,)
# How long the upsert waits for a customer row another transaction holds (an application editing
# it); past this the row is isolated and retried through the tiers instead of holding the batch.
LOCK_TIMEOUT_MS = 5_000
NOT_RETRYABLE = "not retried: the same content would be refused again"
PARKED_ERROR_LIMIT = 1000
_ERROR_LIMIT = 500


class UnknownJob(LookupError):
    """The batch names a job that does not exist for its org; it is parked."""


@dataclass(frozen=True)
class CustomerFailure:
    woo_id: int | None
    error: str
    customer: dict[str, Any]
    retryable: bool = False


@dataclass(frozen=True)
class Stale:
    """A customer whose payload is older than the stored version, which was kept."""

    woo_id: int
    kept_modified: datetime
    payload_modified: datetime | None

    def warning(self) -> str:
        sent = self.payload_modified.isoformat() if self.payload_modified else "never modified"
        return (
            f"stale payload: date_modified_gmt {sent} is older than the stored version's "
            f"{self.kept_modified.isoformat()}; kept the newer version"
        )


@dataclass(frozen=True)
class Parked:
    """Customers whose retries are spent, for the parking queue."""

    batch: CustomerBatch
    attempts: int  # deliveries made in all: the ``parked-attempts`` header
    failures: tuple[CustomerFailure, ...]

    def error_text(self, limit: int = PARKED_ERROR_LIMIT) -> str:
        """The ``parked-error`` header: every customer's error, cut to ``limit`` characters."""
        return _cut("; ".join(_labelled(f) for f in self.failures), limit)


@dataclass(frozen=True)
class BatchOutcome:
    """What the edge publishes before it acks: the retry or parked batch first, then the
    tracker's ``line.done`` / ``line.failed``. ``failures`` is every failed customer's error."""

    done: LinesDone | None = None
    retry: CustomerBatch | None = None
    retry_attempt: int | None = None  # the ``retry-attempt`` header; tier index is this - 1
    park: Parked | None = None
    failed: LinesFailed | None = None
    failures: tuple[CustomerFailure, ...] = ()
    stale: tuple[Stale, ...] = ()
    held: bool = False  # the job is paused: the batch was kept, nothing written
    dropped: bool = False  # the job is cancelled: nothing written
    conflicts: tuple[int, ...] = ()  # woo_ids whose lines wait as ``conflict`` (manual policy)


@dataclass(frozen=True)
class Held:
    """A conflict settled without the upsert: kept MantisNXT's row, or waiting for a person."""

    row: CustomerRow
    outcome: Outcome  # KEEP_MANTIS or WAIT
    warning: str | None
    mantis_version: dict[str, Any]


def read_attempt(headers: Mapping[str, Any] | None) -> int:
    """The attempt number of a delivery: 0 when the header is absent or unreadable."""
    value = (headers or {}).get(ATTEMPT_HEADER, 0)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, bool):
        return 0
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        log.warning(
            "unreadable %s header %r; treating the delivery as attempt 0", ATTEMPT_HEADER, value
        )
        return 0


async def handle_customer_batch(
    batch: CustomerBatch,
    *,
    attempt: int,
    pool: asyncpg.Pool,
    max_attempts: int,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
) -> BatchOutcome:
    """Sync one delivery of a batch; see the module docstring for attempts and failures."""
    rows, failures, customers = map_batch(batch)
    final = attempt >= max_attempts
    async with for_org(pool, batch.org_id).transaction() as conn:
        job = await conn.fetchrow(q.SELECT_JOB_CONNECTION, batch.job_id, batch.org_id)
        if job is None:
            raise UnknownJob(f"job {batch.job_id} of org {batch.org_id} does not exist")
        if job["state"] == JobState.PAUSED:
            await conn.execute(
                q.HOLD_BATCH, batch.job_id, batch.org_id, attempt, batch.model_dump_json().encode()
            )
            log.info("job %s is paused: batch %s held", batch.job_id, batch.message_id)
            return BatchOutcome(held=True)
        if job["state"] == JobState.CANCELLED:
            ids = sorted({r.woo_id for r in rows} | {f.woo_id for f in failures if f.woo_id})
            await conn.execute(q.CANCEL_LINES, batch.job_id, batch.org_id, ids)
            log.info("job %s is cancelled: batch %s not written", batch.job_id, batch.message_id)
            return BatchOutcome(dropped=True)
        connection_id = job["connection_id"]
        if connection_id != batch.connection_id:
            rows = [replace(row, connection_id=connection_id) for row in rows]
        policy = ConflictPolicy(job["conflict_policy"] or DEFAULT_POLICY)
        await conn.execute(q.WRITER_SETTINGS.format(lock_timeout_ms=int(lock_timeout_ms)))
        stored = await look_up_stored(conn, rows)
        rows, held, taken = await settle_conflicts(conn, rows, policy, stored)
        synced, refused, stale = await upsert_isolating(conn, rows)
        deleted = [row for row in synced if row.woo_id in stored and stored[row.woo_id]["deleted"]]
        await conn.execute(
            "SET LOCAL lock_timeout TO DEFAULT" + (f"; {q.PLAN_FOR_TABLE_AS_IS}" if deleted else "")
        )
        restored = await restore_customers(conn, batch, connection_id, deleted)
        failures += [
            CustomerFailure(r.woo_id, error, customers[r.woo_id], retryable)
            for r, error, retryable in refused
        ]
        lines = _line_updates(synced, failures, stale, final=final, notes=taken)
        lines += _held_lines(held, customers)
        lines.sort(key=lambda line: int(line["woo_id"]))
        if lines:
            await conn.execute(q.SETTLE_LINES, batch.job_id, batch.org_id, lines)
    kept = [h.row for h in held if h.outcome == Outcome.KEEP_MANTIS]
    waiting = tuple(h.row.woo_id for h in held if h.outcome == Outcome.WAIT)
    outcome = build_outcome(
        batch, sorted([*synced, *kept], key=_woo_id), failures, attempt=attempt, final=final
    )
    if stale or waiting:
        outcome = replace(outcome, stale=tuple(stale.values()), conflicts=waiting)
    log.info(
        "job %s batch %s attempt %d: %d synced (%d stale left alone, %d with warnings), "
        "%d conflicts (%s: %d kept MantisNXT's, %d waiting), %d failed%s%s",
        batch.job_id,
        batch.message_id,
        attempt,
        len(synced),
        len(stale),
        sum(1 for row in synced if row.warnings),
        len(held) + len(taken),
        policy,
        len(kept),
        len(waiting),
        len(failures),
        " (parked)" if outcome.park else "",
        " (retrying)" if outcome.retry else "",
    )
    if restored:
        log.info(
            "job %s: %d customers deleted earlier are back in the store", batch.job_id, restored
        )
    return outcome


async def look_up_stored(
    conn: asyncpg.Connection, rows: Sequence[CustomerRow]
) -> dict[int, asyncpg.Record]:
    """The batch's stored customers that were edited in MantisNXT or are marked deleted, by woo
    id (``SELECT_EDITED_OR_DELETED``): a first sync, or a batch of untouched customers, finds
    none, and skips both the conflicts and the restoring."""
    if not rows:
        return {}
    org_id, connection_id = rows[0].org_id, rows[0].connection_id
    return {
        r["woo_id"]: r
        for r in await conn.fetch(
            q.SELECT_EDITED_OR_DELETED, org_id, connection_id, [row.woo_id for row in rows]
        )
    }


async def settle_conflicts(
    conn: asyncpg.Connection,
    rows: Sequence[CustomerRow],
    policy: ConflictPolicy,
    stored: Mapping[int, asyncpg.Record],
) -> tuple[list[CustomerRow], list[Held], dict[int, str]]:
    """Settle the batch's conflicts by ``policy``: the rows still to upsert, the conflicts held
    back from the upsert (MantisNXT's rows kept here, or waiting), and the warnings of the
    conflicts the store's version wins (upserted with the others). ``stored``: what
    :func:`look_up_stored` found."""
    edited = {woo_id: r for woo_id, r in stored.items() if r["edited"]}
    if not rows:
        return [], [], {}
    org_id, connection_id = rows[0].org_id, rows[0].connection_id
    if not edited:
        return list(rows), [], {}
    upsert: list[CustomerRow] = []
    held: list[Held] = []
    taken: dict[int, str] = {}
    for row in rows:
        record = edited.get(row.woo_id)
        stored = _stored_version(record) if record is not None else None
        outcome = decide(policy, stored, row.source_hash, row.woo_date_modified)
        if outcome in (Outcome.WRITE, Outcome.TAKE_WOO):
            upsert.append(row)
            if outcome == Outcome.TAKE_WOO and stored is not None:
                taken[row.woo_id] = conflict_warning(outcome, policy, stored) or ""
            continue
        assert record is not None and stored is not None
        held.append(
            Held(row, outcome, conflict_warning(outcome, policy, stored), record["mantis_version"])
        )
    kept = [h.row for h in held if h.outcome == Outcome.KEEP_MANTIS]
    if kept:
        await conn.execute(q.PLAN_FOR_TABLE_AS_IS)
        await conn.execute(
            conflicts.KEEP_MANTIS_VERSIONS, org_id, connection_id, *conflicts.keep_arguments(kept)
        )
    return upsert, held, taken


def _stored_version(record: asyncpg.Record) -> StoredVersion:
    return StoredVersion(
        source_hash=record["source_hash"],
        woo_date_modified=record["woo_date_modified"],
        synced_at=record["synced_at"],
        mantis_updated_at=record["mantis_updated_at"],
    )


def _held_lines(held: Sequence[Held], customers: Mapping[int, Any]) -> list[dict[str, Any]]:
    lines = []
    for h in held:
        waiting = h.outcome == Outcome.WAIT
        lines.append(
            {
                "woo_id": h.row.woo_id,
                "state": LineState.CONFLICT if waiting else LineState.DONE,
                "error": None,
                "warning": h.warning,
                "payload": customers[h.row.woo_id] if waiting else None,
                "mantis_version": h.mantis_version if waiting else None,
            }
        )
    return lines


async def restore_customers(
    conn: asyncpg.Connection,
    batch: CustomerBatch,
    connection_id: UUID,
    synced: Sequence[CustomerRow],
) -> int:
    """Clear ``deleted_at`` of stored customers that this job's crawl saw again
    (``RESTORE_CUSTOMERS``, planned for the table as it is: ``PLAN_FOR_TABLE_AS_IS``), in the
    batch's transaction; how many came back."""
    if not synced:
        return 0
    rows = await conn.fetch(
        q.RESTORE_CUSTOMERS,
        batch.org_id,
        connection_id,
        batch.job_id,
        [row.woo_id for row in synced],
    )
    if rows:
        await activity.record(
            conn,
            org_id=batch.org_id,
            job_id=batch.job_id,
            event="customers.restored",
            details={"restored": len(rows), "woo_ids": [r["woo_id"] for r in rows[:20]]},
        )
    return len(rows)


def map_batch(
    batch: CustomerBatch,
) -> tuple[list[CustomerRow], list[CustomerFailure], dict[int, dict[str, Any]]]:
    """Map every customer; a woo_id seen twice keeps its last copy. Rows come sorted by woo_id."""
    settled: dict[object, CustomerRow | CustomerFailure] = {}
    customers: dict[int, dict[str, Any]] = {}
    for index, raw in enumerate(batch.customers):
        try:
            row = map_customer(raw, org_id=batch.org_id, connection_id=batch.connection_id)
        except MappingError as exc:
            key: object = exc.woo_id if exc.woo_id is not None else ("no id", index)
            settled.pop(key, None)  # re-insert so the order follows the last copy
            settled[key] = CustomerFailure(exc.woo_id, _not_retryable(exc.message), raw)
            continue
        settled.pop(row.woo_id, None)
        settled[row.woo_id] = row
        customers[row.woo_id] = raw
    rows = sorted((s for s in settled.values() if isinstance(s, CustomerRow)), key=_woo_id)
    failures = [s for s in settled.values() if isinstance(s, CustomerFailure)]
    return rows, failures, customers


async def upsert_isolating(
    conn: asyncpg.Connection, rows: Sequence[CustomerRow]
) -> tuple[list[CustomerRow], list[tuple[CustomerRow, str, bool]], dict[int, Stale]]:
    """Upsert ``rows`` in one statement; on a row's error, bisect to find the rows behind it.

    Returns the rows stored (or left alone: unchanged, or ``stale`` because the stored version
    is newer), and the refused rows with the reason and whether retrying could help. Each try
    runs in its own savepoint, so a refused half leaves the caller's transaction usable. A batch
    with k bad rows costs about ``2·k·log2(n)`` statements instead of one.
    """
    if not rows:
        return [], [], {}
    try:
        async with conn.transaction():
            records = await conn.fetch(q.UPSERT_CUSTOMERS, *upsert_arguments(rows))
    except (*DATA_ERRORS, *RETRYABLE_ROW_ERRORS) as exc:
        if len(rows) == 1:
            retryable = isinstance(exc, RETRYABLE_ROW_ERRORS)
            error = describe_db_error(exc)
            return [], [(rows[0], error if retryable else _not_retryable(error), retryable)], {}
        middle = len(rows) // 2
        good_left, bad_left, stale_left = await upsert_isolating(conn, rows[:middle])
        good_right, bad_right, stale_right = await upsert_isolating(conn, rows[middle:])
        return good_left + good_right, bad_left + bad_right, stale_left | stale_right
    stale = {
        r["woo_id"]: Stale(r["woo_id"], r["kept_modified"], r["payload_modified"]) for r in records
    }
    return list(rows), [], stale


def upsert_arguments(rows: Sequence[CustomerRow]) -> list[Any]:
    """UPSERT_CUSTOMERS' parameters: the org and connection all ``rows`` share (one batch), then
    one list per field of ``queries.UPSERT_ARRAYS``, in its order."""
    org_ids = {row.org_id for row in rows}
    connection_ids = {row.connection_id for row in rows}
    if len(org_ids) != 1 or len(connection_ids) != 1:
        raise ValueError("an upsert takes the rows of one org and one connection")
    columns = [[getattr(row, name) for row in rows] for name, _ in q.UPSERT_ARRAYS]
    return [org_ids.pop(), connection_ids.pop(), *columns]


def describe_db_error(exc: asyncpg.PostgresError) -> str:
    """Why PostgreSQL refused a row, without SQL and without the row's values (``detail``)."""
    text = f"database refused the customer: {exc.message}"
    column = getattr(exc, "column_name", None)
    constraint = getattr(exc, "constraint_name", None)
    if column:
        text += f"; column {column}"
    if constraint:
        text += f"; constraint {constraint}"
    return _cut(_storable(f"{text} (SQLSTATE {exc.sqlstate})"), _ERROR_LIMIT)


def build_outcome(
    batch: CustomerBatch,
    synced: Sequence[CustomerRow],
    failures: Sequence[CustomerFailure],
    *,
    attempt: int,
    final: bool,
) -> BatchOutcome:
    """Retryable failures go to the next tier while tiers remain; the rest are parked now."""
    ids = {"job_id": batch.job_id, "org_id": batch.org_id}
    done = LinesDone(woo_ids=[row.woo_id for row in synced], **ids) if synced else None
    if not failures:
        return BatchOutcome(done=done)
    next_attempt = attempt + 1
    retrying = [f for f in failures if f.retryable and not final]
    parking = [f for f in failures if not (f.retryable and not final)]
    retry = park = failed = None
    if retrying:
        retry = CustomerBatch(
            # Derived, not random: a redelivered batch re-publishes under the same id.
            message_id=_derived_id(batch.message_id, f"attempt-{next_attempt}"),
            connection_id=batch.connection_id,
            page=None,
            customers=[f.customer for f in retrying],
            **ids,
        )
    if parking:
        parked_batch = CustomerBatch(
            message_id=_derived_id(batch.message_id, f"parked-{next_attempt}"),
            connection_id=batch.connection_id,
            page=None,
            customers=[f.customer for f in parking],
            **ids,
        )
        park = Parked(parked_batch, next_attempt, tuple(parking))
        known = [
            LineFailure(woo_id=f.woo_id, error=f.error, attempts=next_attempt)
            for f in parking
            if f.woo_id is not None
        ]
        failed = LinesFailed(failures=known, **ids) if known else None
    return BatchOutcome(
        done=done,
        retry=retry,
        retry_attempt=next_attempt if retry is not None else None,
        park=park,
        failed=failed,
        failures=tuple(failures),
    )


def _line_updates(
    synced: Sequence[CustomerRow],
    failures: Sequence[CustomerFailure],
    stale: Mapping[int, Stale],
    *,
    final: bool,
    notes: Mapping[int, str] | None = None,
) -> list[dict[str, Any]]:
    lines: dict[int, dict[str, Any]] = {}
    for row in synced:
        said = [stale[row.woo_id].warning()] if row.woo_id in stale else list(row.warnings)
        if notes and row.woo_id in notes and row.woo_id not in stale:
            said.append(notes[row.woo_id])
        lines[row.woo_id] = {
            "woo_id": row.woo_id,
            "state": LineState.DONE,
            "error": None,
            "warning": "; ".join(said) or None,
            "payload": None,
            "mantis_version": None,
        }
    for failure in failures:
        if failure.woo_id is None:
            continue
        parked = final or not failure.retryable
        keep = parked and jsonb_storable(failure.customer)
        lines[failure.woo_id] = {
            "woo_id": failure.woo_id,
            "state": LineState.FAILED if parked else LineState.PROCESSING,
            "error": failure.error,
            "warning": None,
            "payload": failure.customer if keep else None,
            "mantis_version": None,
        }
    return [lines[woo_id] for woo_id in sorted(lines)]


def _woo_id(row: CustomerRow) -> int:
    return row.woo_id


def _derived_id(parent: UUID, purpose: str) -> UUID:
    return uuid5(parent, purpose)


def _labelled(failure: CustomerFailure) -> str:
    who = f"customer {failure.woo_id}" if failure.woo_id is not None else "customer without id"
    return f"{who}: {failure.error}"


def _storable(text: str) -> str:
    """Text PostgreSQL and AMQP headers accept: no NUL, valid UTF-8."""
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


def _not_retryable(error: str) -> str:
    return f"{error} ({NOT_RETRYABLE})"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
