"""PostgreSQL access: the pool, org-scoped transactions, and the runner behind ``woosync migrate``.

Org data sits behind row-level security (migration 0005, forced by 0008): the services connect
as ``woosync_app`` and see an org's rows only inside a transaction that names the org. ``OrgScope``
is how they do that; there is no other way to reach org data from a service. A service refuses to
start unless the server says it is that role and the policies bind it (``require_app_role``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import orjson

from shared.crypto import scram_sha256_verifier

APP_ROLE = "woosync_app"
T = TypeVar("T")
SET_ORG = "SELECT set_config('woosync.org_id', $1, true)"
# Sessions of the schema's owner that act across orgs say so (migration 0008's operator policy):
# the operator commands and the migrations. Nothing else sets it, and it binds no other role.
OPERATOR_SETTINGS = {"woosync.operator": "on"}

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


def _jsonb_text(value: object) -> str:
    """A jsonb parameter's text: orjson's where it can write the value (it refuses a lone
    surrogate, an integer beyond 64 bits and ``shared.jsondepth.NonFiniteFloat``), else json's,
    so that what PostgreSQL receives is what it always received."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return json.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; everything else stays asyncpg's default.
    await conn.set_type_codec("jsonb", encoder=_jsonb_text, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no reset query: nothing a service does outlives its
    transaction (see ``create_pool``), and asyncpg rolls back a transaction left open before it
    calls this. asyncpg's default reset (unlock advisory locks, close cursors, unlisten, reset
    settings) is one more round trip per transaction, about a tenth of a status request's."""


# asyncpg's own default: prepared statements kept per connection (WOOSYNC_DB_STATEMENT_CACHE_SIZE).
STATEMENT_CACHE_SIZE = 100


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "woosync",
    operator: bool = False,
    statement_cache_size: int = STATEMENT_CACHE_SIZE,
) -> asyncpg.Pool:
    """``name`` becomes the connections' application_name, so that an operator tells in
    ``pg_stat_activity`` which service holds which connection. ``operator`` is for the operator
    commands on the owner's URL: their sessions may span orgs (see ``OPERATOR_SETTINGS``).
    ``statement_cache_size`` 0 prepares every statement unnamed, which PgBouncer's transaction
    pooling needs unless it tracks prepared statements itself (docs/operations.md).

    Nothing a service does through a pool outlives its transaction (``SET_ORG`` and ``SET
    LOCAL`` are transaction-local, advisory locks are ``pg_advisory_xact_lock``), so the pool
    works behind transaction pooling; a session-level lock needs a connection of its own
    (``services.tracker.cleanup``)."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        statement_cache_size=statement_cache_size,
        server_settings={"application_name": name, **(OPERATOR_SETTINGS if operator else {})},
    )


async def connect(
    dsn: str, *, operator: bool = False, statement_cache_size: int = STATEMENT_CACHE_SIZE
) -> asyncpg.Connection:
    conn = await asyncpg.connect(
        dsn,
        server_settings=OPERATOR_SETTINGS if operator else None,
        statement_cache_size=statement_cache_size,
    )
    await _init_connection(conn)
    return conn


# What the server says about the role a service connected as. Ownership counts through role
# membership too (an owner's member bypasses row security like the owner); temporary and system
# schemas are left out.
_ROLE_FACTS = """
SELECT current_user AS role, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls,
       ARRAY(
           SELECT n.nspname || '.' || c.relname
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_%'
             AND pg_has_role(current_user, c.relowner, 'USAGE')
           ORDER BY 1
       ) AS owned
FROM pg_roles r
WHERE r.rolname = current_user
"""


ROLE_CHECK_TIMEOUT_S = 10.0


class WrongRoleError(RuntimeError):
    """The services' database connection is not bound by row-level security."""


async def app_role_problem(conn: asyncpg.Connection) -> str | None:
    """Why ``conn`` is not the role row-level security binds, or None when it is.

    Asked of the server, not read from the URL: a URL without a user name or password says
    nothing about the role it ends up as.
    """
    facts = await conn.fetchrow(_ROLE_FACTS)
    if facts is None:  # pragma: no cover - current_user always has a pg_roles row
        return "the server does not know the current role"
    role = facts["role"]
    if role != APP_ROLE:
        return f"it is connected as {role!r}, not as {APP_ROLE!r}"
    if facts["superuser"]:
        return f"{role!r} is a superuser, which row-level security never binds"
    if facts["bypassrls"]:
        return f"{role!r} has BYPASSRLS, which skips row-level security"
    if facts["owned"]:
        shown = ", ".join(facts["owned"][:5]) + (" …" if len(facts["owned"]) > 5 else "")
        return f"{role!r} owns tables ({shown}); it must own none"
    return None


async def check_app_role(dsn: str, *, statement_cache_size: int = STATEMENT_CACHE_SIZE) -> None:
    """Raise WrongRoleError unless ``dsn`` connects as the RLS-bound services' role."""
    conn = await asyncpg.connect(
        dsn, timeout=ROLE_CHECK_TIMEOUT_S, statement_cache_size=statement_cache_size
    )
    try:
        problem = await app_role_problem(conn)
    finally:
        await conn.close()
    if problem is not None:
        raise WrongRoleError(
            f"refusing to start: WOOSYNC_DATABASE_URL must connect as {APP_ROLE}, the role "
            f"row-level security binds (no superuser, no BYPASSRLS, owner of no table), but "
            f"{problem}"
        )


def require_app_role(
    dsn: str, log: logging.Logger, *, statement_cache_size: int = STATEMENT_CACHE_SIZE
) -> None:
    """For a service's ``main()``: check the database role before anything starts; on a wrong
    role log one line and exit with status 2 (status 1 when the database cannot be asked)."""
    try:
        asyncio.run(check_app_role(dsn, statement_cache_size=statement_cache_size))
    except WrongRoleError as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.critical(
            "refusing to start: cannot check the role of WOOSYNC_DATABASE_URL: %s: %s",
            type(exc).__name__,
            exc,
        )
        raise SystemExit(1) from None


class OrgScope:
    """The database as one org sees it: each call runs in a transaction that names the org.

    ``fetch``/``fetchrow``/``fetchval``/``execute`` mirror the pool's, one transaction each;
    ``transaction()`` gives a connection for several statements that must commit together.
    """

    def __init__(self, pool: asyncpg.Pool, org_id: UUID) -> None:
        self.pool = pool
        self.org_id = org_id

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(SET_ORG, str(self.org_id))
            yield conn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._one(lambda conn: conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._one(lambda conn: conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._one(lambda conn: conn.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        return await self._one(lambda conn: conn.execute(query, *args))

    async def _one(self, statement: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """One statement in a transaction that names the org, in three round trips instead of
        four: BEGIN and the org go in one simple query (the status request, the progress feeds'
        and the crawls' checks are such statements). Nothing nests in it, so asyncpg's
        transaction object, which savepoints need, is not needed here."""
        async with self.pool.acquire() as conn:
            await conn.execute(_BEGIN_FOR_ORG.format(org_id=UUID(str(self.org_id))))
            try:
                result = await statement(conn)
            except BaseException:
                await _roll_back(conn)
                raise
            await conn.execute("COMMIT")
            return result


# A UUID's text is hex digits and hyphens: written into the query, it cannot be anything else.
_BEGIN_FOR_ORG = "BEGIN; SELECT set_config('woosync.org_id', '{org_id}', true)"


async def _roll_back(conn: asyncpg.Connection) -> None:
    """End a failed statement's transaction; a connection that cannot is closed (the pool opens
    another), never handed out inside it."""
    if conn.is_closed():
        return
    try:
        await conn.execute("ROLLBACK")
    except (Exception, asyncio.CancelledError):
        conn.terminate()


def for_org(pool: asyncpg.Pool, org_id: UUID) -> OrgScope:
    return OrgScope(pool, org_id)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: Path
    down: Path


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: dict[int, dict[str, Path | str]] = {}
    for path in directory.iterdir():
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        found.setdefault(version, {"name": name})[direction] = path
    migrations = []
    for version, parts in sorted(found.items()):
        if "up" not in parts or "down" not in parts:
            raise RuntimeError(f"migration {version:04d} needs both an up and a down file")
        migrations.append(Migration(version, str(parts["name"]), parts["up"], parts["down"]))  # type: ignore[arg-type]
    return migrations


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(dsn: str) -> bool:
    """Create the database named in ``dsn`` if it is missing; True when it was created."""
    name = urlsplit(dsn).path.lstrip("/")
    if not name:
        raise ValueError("the database URL names no database")
    admin = await asyncpg.connect(_with_database(dsn, "postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await admin.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await admin.close()


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     int PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate_up(
    dsn: str, directory: Path = MIGRATIONS_DIR, *, app_dsn: str | None = None
) -> list[Migration]:
    """Apply every migration not yet recorded, each in its own transaction, in order.

    ``dsn`` is the owner's (``WOOSYNC_ADMIN_DATABASE_URL``). When ``app_dsn`` (the services'
    ``WOOSYNC_DATABASE_URL``) carries a password, the services' role is given it, so that a
    deployment configures the password in one place.
    """
    password = app_password(app_dsn)
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn, server_settings=OPERATOR_SETTINGS)
    applied: list[Migration] = []
    try:
        await conn.execute(_LEDGER)
        # One migrator at a time, so two `woosync up` starting together cannot race.
        await conn.execute("SELECT pg_advisory_lock(7428101)")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in discover(directory):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.up.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
        if password is not None:
            await _set_app_password(conn, password)
    finally:
        await conn.close()
    return applied


def app_password(app_dsn: str | None) -> str | None:
    """The services' role's password from their URL; ValueError if it names another role."""
    if not app_dsn:
        return None
    parts = urlsplit(app_dsn)
    if parts.password is None:
        return None
    if unquote(parts.username or "") != APP_ROLE:
        raise ValueError(
            f"WOOSYNC_DATABASE_URL must connect as {APP_ROLE}, the role row-level security "
            f"binds; it names {unquote(parts.username or '') or 'no user'}"
        )
    password = unquote(parts.password)
    if not password.isascii():
        raise ValueError("the password in WOOSYNC_DATABASE_URL must be ASCII")
    return password


async def _set_app_password(conn: asyncpg.Connection, password: str) -> None:
    # Only the SCRAM verifier travels (and could show in a statement log), never the password.
    # ALTER ROLE takes no parameters: it is quoted with PostgreSQL's own quote_literal.
    statement = await conn.fetchval(
        f"SELECT format('ALTER ROLE {APP_ROLE} PASSWORD %L', $1::text)",
        scram_sha256_verifier(password),
    )
    await conn.execute(statement)


async def migrate_down(
    dsn: str, steps: int = 1, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Revert the newest ``steps`` applied migrations, newest first."""
    conn = await asyncpg.connect(dsn, server_settings=OPERATOR_SETTINGS)
    reverted: list[Migration] = []
    try:
        await conn.execute(_LEDGER)
        await conn.execute("SELECT pg_advisory_lock(7428101)")
        by_version = {mig.version: mig for mig in discover(directory)}
        rows = await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY version DESC LIMIT $1", steps
        )
        for row in rows:
            migration = by_version[row["version"]]
            async with conn.transaction():
                await conn.execute(migration.down.read_text())
                await conn.execute(
                    "DELETE FROM schema_migrations WHERE version = $1", row["version"]
                )
            reverted.append(migration)
    finally:
        await conn.close()
    return reverted
