"""The syncer's per-customer lookups go through the primary key whatever the statistics say.

The state that made a first sync quadratic: ``customer`` analysed while it held a few rows, then
grown by the sync itself. A plan cached for those statistics (a generic plan) scans the table once
per customer looked up. In the syncer's transactions (``WRITER_SETTINGS``) every plan looks each
customer up by its key, whatever statistics it was made with; the two UPDATE joins, which a
generic plan would still run over the connection's every customer, are planned for the table as
it is (``PLAN_FOR_TABLE_AS_IS``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from services.syncer import queries as q
from services.syncer.handlers import upsert_arguments
from shared import conflicts
from shared.mapping import map_customer

ANALYZED_ROWS = 5
GROWN_TO = 20_000  # customers once grown, after ANALYZE saw a few


Scan = tuple[str, str | None, bool]
BY_KEY: Scan = ("Index Scan", "customer_pkey", True)


def scans_of_customer(plan: dict[str, Any]) -> list[Scan]:
    """Each scan of ``customer``: its node, its index, and whether it looks up one customer by
    the whole key (its index condition names woo_id) rather than a range of the key's prefix."""
    found = []
    if plan.get("Relation Name") == "customer" and "Scan" in plan["Node Type"]:
        by_key = "woo_id" in plan.get("Index Cond", "")
        found.append((plan["Node Type"], plan.get("Index Name"), by_key))
    for child in plan.get("Plans", []):
        found += scans_of_customer(child)
    return found


async def add_customers(conn: asyncpg.Connection, org: UUID, connection: UUID, ids: range) -> None:
    await conn.execute(
        """
        INSERT INTO customer (org_id, connection_id, woo_id, email, raw, source_hash)
        SELECT $1, $2, g, 'c' || g || '@shop.example', '{}', 'h'
        FROM generate_series($3::bigint, $4::bigint) AS g
        """,
        org,
        connection,
        ids.start,
        ids.stop - 1,
    )


async def scans_once_grown(
    conn: asyncpg.Connection,
    grow: Callable[[], Awaitable[None]],
    sql: str,
    args: list[Any],
    setup: str,
) -> list[Scan]:
    """The scans of ``customer`` in the plan of ``sql``, prepared and planned seven times (after
    five, PostgreSQL may keep a generic plan) while the table is as last analysed, then planned
    again after ``grow``; each time in a transaction begun with ``setup``, as a batch's is."""
    await conn.execute(f"PREPARE lookup AS {sql}")
    types = (await conn.prepare(sql)).get_parameters()
    literals = [
        await conn.fetchval(f"SELECT quote_nullable($1::{t.name}::text)", value)
        for t, value in zip(types, args, strict=True)
    ]
    explain = f"EXPLAIN (FORMAT JSON) EXECUTE lookup({', '.join(literals)})"
    try:
        async with conn.transaction():
            await conn.execute(setup)
            for _ in range(7):
                await conn.fetchval(explain)
        await grow()
        async with conn.transaction():
            await conn.execute(setup)
            plan = await conn.fetchval(explain)
    finally:
        await conn.execute("DEALLOCATE lookup")
    return scans_of_customer(json.loads(plan)[0]["Plan"])


def customers(ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": i, "email": f"c{i}@shop.example", "date_modified_gmt": None} for i in ids]


async def test_lookups_use_the_primary_key_after_the_table_grew_past_its_statistics(
    pool: asyncpg.Pool,
) -> None:
    org, connection = uuid4(), uuid4()
    looked_up = [3, 4]
    rows = [map_customer(c, org_id=org, connection_id=connection) for c in customers(looked_up)]
    statements = {
        "edited": (q.SELECT_EDITED_OR_DELETED, [org, connection, looked_up]),
        "restore": (q.RESTORE_CUSTOMERS, [org, connection, uuid4(), looked_up]),
        "upsert": (q.UPSERT_CUSTOMERS, upsert_arguments(rows)),
        "keep": (
            conflicts.KEEP_MANTIS_VERSIONS,
            [org, connection, *conflicts.keep_arguments(rows)],
        ),
        # A webhook's change (services/syncer/changes.py), one customer.
        "lock": (q.LOCK_CUSTOMER, [org, connection, 3]),
        "soft delete": (q.SOFT_DELETE_CUSTOMER, [org, connection, 3, datetime.now(UTC)]),
        "undelete": (q.UNDELETE_CUSTOMER, [org, connection, 3]),
    }
    guarded = q.WRITER_SETTINGS.format(lock_timeout_ms=5000)
    async with pool.acquire() as conn:

        async def grow() -> None:
            await add_customers(conn, org, connection, range(ANALYZED_ROWS + 1, GROWN_TO + 1))

        async def scans(sql: str, args: list[Any], setup: str) -> list[Scan]:
            await conn.execute("TRUNCATE customer")
            await add_customers(conn, org, connection, range(1, ANALYZED_ROWS + 1))
            await conn.execute("ANALYZE customer")
            return await scans_once_grown(conn, grow, sql, args, setup)

        generic = "SET LOCAL plan_cache_mode = force_generic_plan"
        for name, (sql, args) in statements.items():
            # The syncer's transaction: every scan of customer looks one customer up by its key.
            # The batch's lookups and its upsert: in the plan PostgreSQL chooses and in a generic
            # plan kept from before the growth. The two UPDATE joins: planned for the table as
            # it is, as the handler runs them.
            if name in ("restore", "keep"):
                setups = [f"{guarded}; {q.PLAN_FOR_TABLE_AS_IS}"]
            else:
                setups = [guarded, f"{guarded}; {generic}"]
            for setup in setups:
                found = await scans(sql, args, setup)
                assert found, (name, setup)
                assert all(s == BY_KEY for s in found), (name, setup, found)
        # What PLAN_FOR_TABLE_AS_IS is for: a generic plan of an UPDATE join reads the
        # connection's customers through the key's prefix, even with sequential scans out.
        sql, args = statements["keep"]
        assert not all(s == BY_KEY for s in await scans(sql, args, f"{guarded}; {generic}"))
        # A plan kept from before the growth scans the whole table per customer: what the
        # guard is for (should PostgreSQL ever stop doing this, the guard may go).
        sql, args = statements["edited"]
        kept = await scans(sql, args, "SET LOCAL plan_cache_mode = force_generic_plan")
        assert BY_KEY not in kept, kept
