"""Property: whatever customers a batch holds, the syncer stores the valid ones, fails the others
with a message, and never raises (against the real PostgreSQL).

Batches are drawn from the same generators as the mapping's property test: every field may be
missing, null, of the wrong type, absurdly long, or hold what PostgreSQL refuses. Only what can
travel in a message reaches the syncer, so each batch goes through JSON as the broker would carry
it. Every example gets its own org, connection and job in one shared database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, assume, event, example, given, settings
from hypothesis import strategies as st

from services.syncer.handlers import NOT_RETRYABLE, handle_customer_batch
from shared.mapping import CustomerRow, MappingError, map_customer
from shared.messages import CustomerBatch
from tests.e2e.processes import infra_shared_lock
from tests.factories import add_lines, make_sync_job
from tests.strategies import customers

MAX_ATTEMPTS = 3
MAX_WOO_ID = 2**63 - 1


def as_sent(value: Any) -> Any:
    """What of a generated value a store's JSON can carry: lone surrogates (which UTF-8
    cannot encode) become U+FFFD, sets become lists, other objects their ``repr``."""
    if isinstance(value, str):
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)
    if isinstance(value, dict):
        return {as_sent(k) if isinstance(k, str) else str(k): as_sent(v) for k, v in value.items()}
    if isinstance(value, list | set | frozenset | tuple):
        return [as_sent(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


decent = st.fixed_dictionaries(
    {"id": st.integers(1, 10**6), "email": st.emails()},
    optional={"first_name": st.text(max_size=30), "billing": st.just({"phone": "+27 21"})},
)
# Some ids repeat within a batch (a customer read twice keeps its last copy).
batches = st.lists(
    st.one_of(
        customers(),
        decent,
        st.builds(lambda c, i: {**c, "id": i}, customers(), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=8,
)


def line_id(customer: dict[str, Any]) -> int | None:
    """The id the fetcher would record a line for: an integer the line table holds."""
    value = customer.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_WOO_ID:
        return value
    return None


def expected(
    batch: CustomerBatch,
) -> tuple[dict[int, CustomerRow], dict[int, str], int]:
    """Mapped rows and refused ids, the last copy of an id winning; and refusals without id."""
    rows: dict[int, CustomerRow] = {}
    refused: dict[int, str] = {}
    anonymous = 0
    for raw in batch.customers:
        try:
            row = map_customer(raw, org_id=batch.org_id, connection_id=batch.connection_id)
        except MappingError as exc:
            if exc.woo_id is None:
                anonymous += 1
            else:
                rows.pop(exc.woo_id, None)
                refused[exc.woo_id] = exc.message
            continue
        refused.pop(row.woo_id, None)
        rows[row.woo_id] = row
    return rows, refused, anonymous


@pytest.fixture
async def no_server_restarts() -> AsyncIterator[None]:
    """A shared hold on the lock that server-restarting fault tests take exclusively."""
    async with infra_shared_lock():
        yield


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("no_server_restarts")
@settings(
    max_examples=100,
    deadline=None,
    # No explain phase: its tracer makes a failing example minutes slow on this Python.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one database for all examples, a job each
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(drawn=batches, final=st.booleans())
# A float in exponent form comes back from jsonb as the integer it equals.
@example(drawn=[{"id": 1, "email": "a@b.example", "": 2.828237387965897e16}], final=False)
async def test_any_batch_stores_the_valid_and_fails_the_rest(
    pool: asyncpg.Pool, drawn: list[Any], final: bool
) -> None:
    travelling = [as_sent(c) for c in drawn if isinstance(c, dict)]
    assume(travelling)
    async with pool.acquire() as conn:
        job = await make_sync_job(
            conn, org_name="prop", store_url="https://shop.example", consumer_secret_enc=b"\x00\xff"
        )
    org_id, job_id = job.org_id, job.job_id
    sent = job.batch(travelling, page=1)
    batch = CustomerBatch.model_validate_json(sent.model_dump_json())
    line_ids = sorted({i for c in batch.customers if (i := line_id(c)) is not None})
    await add_lines(pool, job_id, org_id, line_ids, page=1)

    attempt = MAX_ATTEMPTS if final else 0
    # Nothing may escape but an infrastructure error, and the database is up.
    outcome = await handle_customer_batch(
        batch, attempt=attempt, pool=pool, max_attempts=MAX_ATTEMPTS
    )

    rows, refused, anonymous = expected(batch)
    event(f"{len(rows)} stored, {len(refused) + anonymous} refused")
    stored = {
        r["woo_id"]: r
        for r in await pool.fetch(
            "SELECT woo_id, source_hash FROM customer WHERE org_id = $1", org_id
        )
    }
    # Every valid customer is stored, as mapped; no invalid one is.
    assert set(stored) == set(rows)
    for woo_id, row in rows.items():
        assert stored[woo_id]["source_hash"] == row.source_hash
        # Compared as jsonb: 2.5e+16 comes back as the integer it equals, which is no change.
        same = await pool.fetchval(
            "SELECT raw = $3::jsonb FROM customer WHERE org_id = $1 AND woo_id = $2",
            org_id, woo_id, row.raw,
        )  # fmt: skip
        assert same, (woo_id, row.raw)
    assert sorted(outcome.done.woo_ids if outcome.done else []) == sorted(rows)

    # Every invalid one fails, with a message.
    failed_ids = [f.woo_id for f in outcome.failures if f.woo_id is not None]
    assert sorted(failed_ids) == sorted(refused)
    assert sum(f.woo_id is None for f in outcome.failures) == anonymous
    for failure in outcome.failures:
        assert failure.error.strip()
        if failure.woo_id is not None:
            # The mapping's refusal is not retried (issue 8), and says so.
            assert failure.error == f"{refused[failure.woo_id]} ({NOT_RETRYABLE})"

    lines = {
        r["woo_id"]: r
        for r in await pool.fetch(
            "SELECT woo_id, state, last_error FROM woo_customer_sync_queue_line "
            "WHERE job_id = $1",
            job_id,
        )
    }
    for woo_id in rows:
        assert lines[woo_id]["state"] == "done" and lines[woo_id]["last_error"] is None
    for woo_id, message in refused.items():
        assert lines[woo_id]["state"] == "failed"
        assert lines[woo_id]["last_error"] == f"{message} ({NOT_RETRYABLE})"

    if not outcome.failures:
        assert outcome.retry is None and outcome.park is None
    else:  # parked on this delivery, whichever it is: no tier can fix content
        assert outcome.park is not None and outcome.retry is None
        assert outcome.park.attempts == attempt + 1 and outcome.park.error_text()
        assert sorted(f.woo_id for f in (outcome.failed.failures if outcome.failed else [])) == (
            sorted(refused)
        )
