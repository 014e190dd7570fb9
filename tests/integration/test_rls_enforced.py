"""Row-level security is enforced, not assumed (migration 0008, shared.db.require_app_role).

A service refuses to start unless the server says its connection is woosync_app, bound by the
policies; every org table forces its policies on its owner too; and the operator commands keep
working for an owner that is not a superuser (where FORCE binds it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared import db
from shared.auth import authenticate
from shared.broker import make_broker
from shared.settings import Settings
from shared.topology import Topology, declare_topology
from tests.conftest import PG_ADMIN_URL
from tests.e2e.harness import Stack
from tests.factories import ORG_TABLES
from tests.helpers import service_env

SERVICES = ("api", "fetcher", "syncer", "tracker")
EXIT_WAIT_S = 60


def _as_role(dsn: str, role: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{role}@{rest.rsplit('@', 1)[-1]}"


# -- FORCE on every org table -------------------------------------------------------------------


async def test_every_org_table_forces_row_level_security(pool: asyncpg.Pool) -> None:
    """Every table with row security, or with an org_id column, has it enabled and forced."""
    rows = await pool.fetch(
        """
        SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
          AND (c.relrowsecurity OR EXISTS (
                SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped))
        """
    )
    tables = {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"]) for r in rows}
    assert set(ORG_TABLES) <= set(tables)
    assert {t: v for t, v in tables.items() if v != (True, True)} == {}


# -- the role check, branch by branch -----------------------------------------------------------


async def test_the_role_check_accepts_only_the_bound_role(
    database_url: str, app_database_url: str
) -> None:
    await db.check_app_role(app_database_url)  # the services' own role passes
    with pytest.raises(db.WrongRoleError) as refused:
        await db.check_app_role(database_url)  # the schema's owner (a superuser here)
    assert "refusing to start" in str(refused.value) and db.APP_ROLE in str(refused.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (f"ALTER ROLE {db.APP_ROLE} SUPERUSER", "is a superuser"),
        (f"ALTER ROLE {db.APP_ROLE} BYPASSRLS", "has BYPASSRLS"),
        (f"ALTER TABLE customer OWNER TO {db.APP_ROLE}", "owns tables (public.customer)"),
    ],
)
async def test_the_role_check_refuses_woosync_app_when_policies_would_not_bind_it(
    database_url: str, change: str, expected: str
) -> None:
    """Each attribute that lifts row security, given to woosync_app inside a transaction that is
    rolled back (role attributes are transactional), so no other session ever sees it."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(change)
            await conn.execute(f"SET LOCAL ROLE {db.APP_ROLE}")
            problem = await db.app_role_problem(conn)
            assert problem is not None and expected in problem, problem
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


# -- real processes refuse to start -------------------------------------------------------------


@pytest.fixture
async def bypass_role(database_url: str) -> AsyncIterator[str]:
    """A login role with BYPASSRLS and a name of its own, dropped afterwards."""
    name = f"woosync_bypass_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER BYPASSRLS")
        yield name
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


def _refusal_lines(stack: Stack) -> list[str]:
    return [line for line in stack.logs().splitlines() if "refusing to start" in line]


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_on_the_owners_url_exits_with_one_clear_line(
    settings: Settings, tmp_path: Path, service: str
) -> None:
    stack = Stack(settings, tmp_path, {"WOOSYNC_DATABASE_URL": settings.admin_database_url})
    process = stack.start(service)
    code = await asyncio.to_thread(process.wait, EXIT_WAIT_S)
    assert code == 2, stack.logs()
    lines = _refusal_lines(stack)
    assert len(lines) == 1, stack.logs()
    assert f"must connect as {db.APP_ROLE}" in lines[0] and "CRITICAL" in lines[0]
    assert "Traceback" not in stack.logs()


async def test_a_role_with_bypassrls_is_refused_whatever_its_url(
    settings: Settings, tmp_path: Path, bypass_role: str
) -> None:
    """No password in the URL, a role that can log in: the server's answer decides."""
    url = _as_role(settings.admin_database_url, bypass_role)
    stack = Stack(settings, tmp_path, {"WOOSYNC_DATABASE_URL": url})
    process = stack.start("syncer")
    code = await asyncio.to_thread(process.wait, EXIT_WAIT_S)
    assert code == 2, stack.logs()
    (line,) = _refusal_lines(stack)
    assert f"connected as '{bypass_role}'" in line


# -- an owner that is not a superuser -----------------------------------------------------------


async def declare(settings: Settings, topology: Topology) -> None:
    """The test namespace's queues, so that the dlq commands find the parking queue."""
    broker = make_broker(settings)
    await broker.connect()
    try:
        await declare_topology(broker, topology)
    finally:
        await broker.stop()


def _woosync(settings: Settings, admin_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(settings, WOOSYNC_ADMIN_DATABASE_URL=admin_url)
    return subprocess.run(
        [sys.executable, "-m", "woosync.cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_operator_commands_work_for_an_owner_that_force_binds(
    settings: Settings, clean_broker: Topology, plain_owner_database: str
) -> None:
    owner_url = plain_owner_database
    owner = await asyncpg.connect(owner_url)
    try:
        assert not await owner.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles "
                                        "WHERE rolname = current_user")  # fmt: skip

        created = await asyncio.to_thread(_woosync, settings, owner_url, "org", "create", "acme")
        assert created.returncode == 0, created.stderr
        org = json.loads(created.stdout)
        key = await asyncio.to_thread(_woosync, settings, owner_url, "key", "create", org["org_id"])
        assert key.returncode == 0, key.stderr
        second = json.loads(key.stdout)
        listed = await asyncio.to_thread(_woosync, settings, owner_url, "key", "list")
        assert listed.returncode == 0, listed.stderr
        assert len(listed.stdout.splitlines()) == 2  # across orgs: the operator's view
        revoked = await asyncio.to_thread(
            _woosync, settings, owner_url, "key", "revoke", second["key_id"]
        )
        assert revoked.returncode == 0, revoked.stderr
        rotated = await asyncio.to_thread(
            _woosync, settings, owner_url, "secrets", "rotate", "--dry-run"
        )
        assert rotated.returncode == 0, rotated.stderr
        await declare(settings, clean_broker)
        for dlq in (("dlq", "list"), ("dlq", "replay")):
            done = await asyncio.to_thread(_woosync, settings, owner_url, *dlq)
            assert done.returncode == 0, done.stderr
        assert "replayed 0 message(s)" in done.stdout

        # FORCE binds the owner outside an operator session: no org's rows, no writes.
        assert await owner.fetchval("SELECT count(*) FROM orgs") == 0
        assert await owner.fetchval("SELECT count(*) FROM api_keys") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await owner.execute("INSERT INTO orgs (id, name) VALUES ($1, 'x')", uuid.uuid4())
    finally:
        await owner.close()

    # The services' SECURITY DEFINER paths run as that owner and still work.
    app = await db.create_pool(_as_role(owner_url, db.APP_ROLE), min_size=1, max_size=1)
    try:
        caller = await authenticate(app, f"Bearer {org['api_key']}")
        assert caller is not None and str(caller.org_id) == org["org_id"]
        assert await authenticate(app, f"Bearer {second['api_key']}") is None  # revoked
        assert await app.fetchval("SELECT count(*) FROM woosync_open_jobs()") == 0
        assert await app.fetchval("SELECT count(*) FROM orgs") == 0  # and woosync_app sees none
        # Setting the operator variable does nothing for woosync_app: the policy is not its.
        async with app.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL woosync.operator = 'on'")
            assert await conn.fetchval("SELECT count(*) FROM orgs") == 0
    finally:
        await app.close()
