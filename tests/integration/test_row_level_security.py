"""Row-level security, the second wall between orgs (migration 0005).

Every query of the services filters by org; these tests take the filter away and show that the
database alone still keeps each org to its own rows, for the role the services connect as.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
import pytest

from shared.auth import authenticate, create_org
from shared.db import APP_ROLE, for_org
from tests.factories import (
    ORG_TABLES,
    add_customers,
    add_held_batch,
    add_lines,
    add_page,
    add_webhooks,
    make_job,
    make_schedule,
)

# Every table that holds an org's data, with the column that names the org (pages name it
# through their job).


@dataclass
class TwoOrgs:
    a: UUID
    b: UUID
    key_a: str
    counts_a: dict[str, int]
    counts_b: dict[str, int]


async def _counts(pool: asyncpg.Pool, org_id: UUID) -> dict[str, int]:
    """Rows per org table that belong to ``org_id``, counted by the owner with the filter."""
    counts = {}
    for table, column in ORG_TABLES.items():
        if column is None:
            query = f"""SELECT count(*) FROM {table} p JOIN woo_customer_sync_queue j
                        ON j.id = p.job_id WHERE j.org_id = $1"""
        else:
            query = f"SELECT count(*) FROM {table} WHERE {column} = $1"
        counts[table] = await pool.fetchval(query, org_id)
    return counts


async def job_connection(pool: asyncpg.Pool, job_id: UUID) -> UUID:
    connection_id: UUID = await pool.fetchval(
        "SELECT connection_id FROM woo_customer_sync_queue WHERE id = $1", job_id
    )
    return connection_id


@pytest.fixture
async def two_orgs(pool: asyncpg.Pool) -> TwoOrgs:
    """Two orgs with rows in every org table (b with more of each, so counts tell them apart)."""
    a, key_a = await create_org(pool, "a")
    b, _ = await create_org(pool, "b")
    for org_id, size in ((a, 3), (b, 5)):
        job_id = await make_job(pool, org_id)
        await make_schedule(pool, await job_connection(pool, job_id), due_in_s=3600)
        await add_lines(pool, job_id, org_id, range(1, size + 1))
        await add_customers(pool, job_id, range(1, size + 1))
        for page in range(1, size + 1):
            await add_page(pool, job_id, page, 1)
            await add_held_batch(pool, job_id, org_id)
        await add_webhooks(pool, job_id, size - 2)
    counts_a, counts_b = await _counts(pool, a), await _counts(pool, b)
    assert all(counts_a.values()) and all(counts_b.values())
    return TwoOrgs(a, b, key_a, counts_a, counts_b)


async def test_without_the_org_a_query_without_filter_returns_nothing(
    app_pool: asyncpg.Pool, two_orgs: TwoOrgs
) -> None:
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        for table in ORG_TABLES:
            assert await conn.fetch(f"SELECT * FROM {table}") == [], table


async def test_with_an_org_a_query_without_filter_returns_only_that_orgs_rows(
    app_pool: asyncpg.Pool, pool: asyncpg.Pool, two_orgs: TwoOrgs
) -> None:
    for org_id, expected in ((two_orgs.a, two_orgs.counts_a), (two_orgs.b, two_orgs.counts_b)):
        async with for_org(app_pool, org_id).transaction() as conn:
            seen = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ORG_TABLES}
            org_ids = await conn.fetch("SELECT DISTINCT org_id FROM customer")
        assert seen == expected
        assert [r["org_id"] for r in org_ids] == [org_id]
    # The org lasts for its transaction only: a pooled connection forgets it.
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM customer") == 0


async def test_writes_reach_only_the_named_org(
    app_pool: asyncpg.Pool, pool: asyncpg.Pool, two_orgs: TwoOrgs
) -> None:
    before_b = await pool.fetch(
        "SELECT * FROM customer WHERE org_id = $1 ORDER BY woo_id", two_orgs.b
    )
    scope = for_org(app_pool, two_orgs.a)

    # Unfiltered updates and deletes touch the named org's rows only.
    updated = await scope.execute("UPDATE customer SET first_name = 'changed'")
    assert updated == f"UPDATE {two_orgs.counts_a['customer']}"
    deleted = await scope.execute("DELETE FROM woo_customer_sync_queue_line")
    assert deleted == f"DELETE {two_orgs.counts_a['woo_customer_sync_queue_line']}"
    # Rows written for another org are refused, by every kind of statement.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scope.execute(
            """INSERT INTO customer (org_id, connection_id, woo_id, email, raw, source_hash)
               VALUES ($1, $2, 99, 'x@example.com', '{}', 'h')""",
            two_orgs.b,
            uuid4(),
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scope.execute("UPDATE customer SET org_id = $1", two_orgs.b)
    # Without an org, nothing is written at all.
    async with app_pool.acquire() as conn:
        assert await conn.execute("DELETE FROM customer") == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute("INSERT INTO orgs (id, name) VALUES ($1, 'sneaky')", uuid4())

    assert (
        await pool.fetch("SELECT * FROM customer WHERE org_id = $1 ORDER BY woo_id", two_orgs.b)
        == before_b
    )
    assert await _counts(pool, two_orgs.b) == two_orgs.counts_b


async def test_the_services_role_cannot_bypass_the_policies(pool: asyncpg.Pool) -> None:
    role = await pool.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = $1",
        APP_ROLE,
    )
    assert role is not None and not any(role.values())
    owned = await pool.fetch("SELECT tablename FROM pg_tables WHERE tableowner = $1", APP_ROLE)
    assert owned == []  # owners are not bound by their tables' policies
    # Every table with an org column is covered, so a new one cannot be forgotten.
    with_org_column = {
        r["table_name"]
        for r in await pool.fetch(
            """SELECT table_name FROM information_schema.columns
               WHERE table_schema = 'public' AND column_name = 'org_id'"""
        )
    }
    assert with_org_column <= set(ORG_TABLES)
    protected = await pool.fetch(
        # One policy for every role (PUBLIC, oid 0); the owner's operator policy of 0008 is not
        # woosync_app's.
        """SELECT c.relname, c.relrowsecurity,
                  count(p.polname) FILTER (WHERE p.polroles = '{0}') AS policies,
                  count(p.polname) FILTER (
                      WHERE $2::regrole = ANY(p.polroles)) AS app_policies
           FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid
           WHERE c.relname = ANY($1::text[]) GROUP BY c.relname, c.relrowsecurity""",
        list(ORG_TABLES),
        APP_ROLE,
    )
    assert {r["relname"] for r in protected} == set(ORG_TABLES)
    assert all(
        r["relrowsecurity"] and r["policies"] == 1 and r["app_policies"] == 0 for r in protected
    ), protected


async def test_the_audit_log_is_insert_only_for_the_services_role(
    app_pool: asyncpg.Pool, two_orgs: TwoOrgs
) -> None:
    scope = for_org(app_pool, two_orgs.a)
    for statement in ("UPDATE woo_sync_activity SET event = 'x'", "DELETE FROM woo_sync_activity"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await scope.execute(statement)
    assert (
        await scope.fetchval("SELECT count(*) FROM woo_sync_activity")
        == (two_orgs.counts_a["woo_sync_activity"])
    )


async def test_the_cross_org_functions_reveal_only_what_their_callers_need(
    app_pool: asyncpg.Pool, pool: asyncpg.Pool, two_orgs: TwoOrgs
) -> None:
    # The key lookup finds the key's org without any org set ...
    caller = await authenticate(app_pool, f"Bearer {two_orgs.key_a}")
    assert caller is not None and caller.org_id == two_orgs.a
    assert await authenticate(app_pool, "Bearer wsk_unknown") is None
    # ... and the tracker's sweep lists open jobs of every org, with nothing but ids.
    async with app_pool.acquire() as conn:
        swept = await conn.fetch("SELECT * FROM woosync_open_jobs()")
        assert {r["org_id"] for r in swept} == {two_orgs.a, two_orgs.b}
        assert set(swept[0].keys()) == {"id", "org_id"}
    # Nobody else may call them.
    acl = await pool.fetch(
        """SELECT proname, proacl::text[] AS acl FROM pg_proc
           WHERE proname IN ('woosync_authenticate', 'woosync_open_jobs',
                             'woosync_stall_candidates')"""
    )
    assert len(acl) == 3
    for row in acl:
        grantees = {entry.split("=", 1)[0] for entry in row["acl"]}
        assert "" not in grantees and APP_ROLE in grantees, row  # "" is PUBLIC
