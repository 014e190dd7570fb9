"""PostgreSQL access: the pool, and the migration runner behind ``woosync migrate``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; everything else stays asyncpg's default.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection
    )


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


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


async def migrate_up(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every migration not yet recorded, each in its own transaction, in order."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
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
    finally:
        await conn.close()
    return applied


async def migrate_down(
    dsn: str, steps: int = 1, directory: Path = MIGRATIONS_DIR
) -> list[Migration]:
    """Revert the newest ``steps`` applied migrations, newest first."""
    conn = await asyncpg.connect(dsn)
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
