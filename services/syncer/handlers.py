"""The syncer's core: map a batch, upsert it with its line states in one transaction, and say what
to publish. No broker here, so tests drive it with a real database and plain arguments.

Attempts and parking
--------------------
``attempt`` is how many times these customers have already failed: 0 on the first delivery of a
batch, then the ``retry-attempt`` header (``shared.topology.ATTEMPT_HEADER``) of a batch
re-published by a retry tier. With ``max_attempts = len(retry tiers)`` (3 by default):

========  ==========================================  ===========================
attempt   customers that fail again go to              with header
========  ==========================================  ===========================
0         retry tier 0 (200 ms in tests, 5 s default)   ``retry-attempt: 1``
1         retry tier 1 (400 ms / 30 s)                  ``retry-attempt: 2``
2         retry tier 2 (800 ms / 120 s)                 ``retry-attempt: 3``
3         the parking queue, line ``failed``            ``parked-attempts: 4``
========  ==========================================  ===========================

So "three attempts, then the parking queue" counts *retries*: a customer is tried
``max_attempts + 1`` times in all (the first delivery and one per tier) before it is parked, and
``parked-attempts`` and ``LineFailure.attempts`` give that total. Each retry batch carries only
the customers that failed; the good ones of a batch are committed on the first delivery.

While retries remain, a failed line is ``processing`` with ``last_error`` set (not failed yet, so
the job cannot finish early); once parked it is ``failed`` with ``payload`` = the customer as
sent, which is what an operator's retry re-publishes. A customer without a usable ``id`` has no
line: it travels through the tiers and into the parking queue, but the tracker never hears of it.

Failures
--------
Mapping errors fail one customer. If the batch upsert is refused by PostgreSQL for data reasons
(a value a column or constraint refuses), the batch is bisected inside savepoints until the bad
customers are alone; the rest commit. Anything else (connection lost, pool closed, deadlock) is
raised, so the edge requeues the whole delivery, which is safe: unchanged customers write nothing
and ``done`` lines are never touched again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid5

import asyncpg

from services.syncer import queries as q
from shared.db import for_org
from shared.mapping import (
    CustomerRow,
    MappingError,
    jsonb_storable,
    map_customer,
)
from shared.messages import CustomerBatch, LineFailure, LinesDone, LinesFailed
from shared.topology import ATTEMPT_HEADER

log = logging.getLogger("woosync.syncer")

# Errors about the values of a row: bisecting the batch isolates the customers behind them.
DATA_ERRORS: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
PARKED_ERROR_LIMIT = 1000
_ERROR_LIMIT = 500


class UnknownJob(LookupError):
    """The batch names a job that does not exist for its org and connection; it is parked."""


@dataclass(frozen=True)
class CustomerFailure:
    woo_id: int | None
    error: str
    customer: dict[str, Any]


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
    batch: CustomerBatch, *, attempt: int, pool: asyncpg.Pool, max_attempts: int
) -> BatchOutcome:
    """Sync one delivery of a batch; see the module docstring for attempts and failures."""
    rows, failures, customers = map_batch(batch)
    final = attempt >= max_attempts
    async with for_org(pool, batch.org_id).transaction() as conn:
        job = await conn.fetchval(q.SELECT_JOB, batch.job_id, batch.org_id, batch.connection_id)
        if job is None:
            raise UnknownJob(
                f"job {batch.job_id} of org {batch.org_id} and connection "
                f"{batch.connection_id} does not exist"
            )
        synced, refused = await upsert_isolating(conn, rows)
        failures += [CustomerFailure(r.woo_id, error, customers[r.woo_id]) for r, error in refused]
        lines = _line_updates(synced, failures, final=final)
        if lines:
            await conn.execute(q.SETTLE_LINES, batch.job_id, batch.org_id, lines)
    outcome = build_outcome(batch, synced, failures, attempt=attempt, final=final)
    log.info(
        "job %s batch %s attempt %d: %d synced, %d failed%s",
        batch.job_id,
        batch.message_id,
        attempt,
        len(synced),
        len(failures),
        " (parked)" if outcome.park else " (retrying)" if outcome.retry else "",
    )
    return outcome


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
            settled[key] = CustomerFailure(exc.woo_id, exc.message, raw)
            continue
        settled.pop(row.woo_id, None)
        settled[row.woo_id] = row
        customers[row.woo_id] = raw
    rows = sorted((s for s in settled.values() if isinstance(s, CustomerRow)), key=_woo_id)
    failures = [s for s in settled.values() if isinstance(s, CustomerFailure)]
    return rows, failures, customers


async def upsert_isolating(
    conn: asyncpg.Connection, rows: Sequence[CustomerRow]
) -> tuple[list[CustomerRow], list[tuple[CustomerRow, str]]]:
    """Upsert ``rows`` in one statement; on a data error, bisect to find the rows behind it.

    Each try runs in its own savepoint, so a refused half leaves the caller's transaction usable.
    A batch with k bad rows costs about ``2·k·log2(n)`` statements instead of one.
    """
    if not rows:
        return [], []
    try:
        async with conn.transaction():
            await conn.execute(q.UPSERT_CUSTOMERS, *upsert_arguments(rows))
    except DATA_ERRORS as exc:
        if len(rows) == 1:
            return [], [(rows[0], describe_db_error(exc))]
        middle = len(rows) // 2
        good_left, bad_left = await upsert_isolating(conn, rows[:middle])
        good_right, bad_right = await upsert_isolating(conn, rows[middle:])
        return good_left + good_right, bad_left + bad_right
    return list(rows), []


# The columns UPSERT_CUSTOMERS takes as arrays, in its parameter order ($3 onwards).
UPSERT_COLUMNS = (
    "woo_id",
    "email",
    "first_name",
    "last_name",
    "username",
    "role",
    "company",
    "phone",
    "is_paying_customer",
    "avatar_url",
    "woo_date_created",
    "woo_date_modified",
    "raw_json",
    "source_hash",
)


def upsert_arguments(rows: Sequence[CustomerRow]) -> list[Any]:
    """UPSERT_CUSTOMERS' parameters: the org and connection all ``rows`` share (one batch), then
    one list per column."""
    org_ids = {row.org_id for row in rows}
    connection_ids = {row.connection_id for row in rows}
    if len(org_ids) != 1 or len(connection_ids) != 1:
        raise ValueError("an upsert takes the rows of one org and one connection")
    columns = [[getattr(row, name) for row in rows] for name in UPSERT_COLUMNS]
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
    ids = {"job_id": batch.job_id, "org_id": batch.org_id}
    done = LinesDone(woo_ids=[row.woo_id for row in synced], **ids) if synced else None
    if not failures:
        return BatchOutcome(done=done)
    next_attempt = attempt + 1
    failed_batch = CustomerBatch(
        # Derived, not random: a redelivered batch re-publishes under the same id.
        message_id=_derived_id(batch.message_id, f"attempt-{next_attempt}"),
        connection_id=batch.connection_id,
        page=None,
        customers=[f.customer for f in failures],
        **ids,
    )
    if not final:
        return BatchOutcome(
            done=done,
            retry=failed_batch,
            retry_attempt=next_attempt,
            failures=tuple(failures),
        )
    known = [f for f in failures if f.woo_id is not None]
    failed = (
        LinesFailed(
            failures=[
                LineFailure(woo_id=f.woo_id, error=f.error, attempts=next_attempt)
                for f in known
                if f.woo_id is not None
            ],
            **ids,
        )
        if known
        else None
    )
    return BatchOutcome(
        done=done,
        park=Parked(failed_batch, next_attempt, tuple(failures)),
        failed=failed,
        failures=tuple(failures),
    )


def _line_updates(
    synced: Sequence[CustomerRow], failures: Sequence[CustomerFailure], *, final: bool
) -> list[dict[str, Any]]:
    lines: dict[int, dict[str, Any]] = {
        row.woo_id: {"woo_id": row.woo_id, "state": "done", "error": None, "payload": None}
        for row in synced
    }
    for failure in failures:
        if failure.woo_id is None:
            continue
        keep = final and jsonb_storable(failure.customer)
        lines[failure.woo_id] = {
            "woo_id": failure.woo_id,
            "state": "failed" if final else "processing",
            "error": failure.error,
            "payload": failure.customer if keep else None,
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


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
