"""The `woosync` command as a user runs it: migrate, org create, up."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import psutil
import pytest

from shared.auth import authenticate
from shared.crypto import scram_sha256_verifier
from shared.db import APP_ROLE
from shared.settings import Settings
from tests.conftest import PG_ADMIN_URL
from tests.helpers import free_port

WOOSYNC = [sys.executable, "-m", "woosync.cli"]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WOOSYNC, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A database name that does not exist yet: `woosync migrate` must create it."""
    name = f"woosync_cli_{uuid.uuid4().hex[:10]}"
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    subprocess.run(["psql", "-h", "127.0.0.1", "-d", "postgres", "-qc",
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)


def app_url(dsn: str, *, password: str) -> str:
    scheme, rest = dsn.split("://", 1)
    return f"{scheme}://{APP_ROLE}:{password}@{rest.rsplit('@', 1)[-1]}"


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


async def test_migrate_creates_applies_once_and_reverts(fresh_database: str) -> None:
    env = {
        "WOOSYNC_ADMIN_DATABASE_URL": fresh_database,
        "WOOSYNC_DATABASE_URL": app_url(fresh_database, password="app-pw"),
    }
    first = run("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_core" in first.stdout
    expected = {"orgs", "api_keys", "woo_connections", "woo_customer_sync_queue",
                "woo_customer_sync_queue_line", "woo_customer_sync_page", "woo_sync_activity",
                "woo_customer_sync_hold", "woo_webhook",
                "customer", "schema_migrations", "woosync_rate_limit",
                "woosync_stream_lease", "woosync_store_limit", "woosync_store_lease",
                "woo_sync_schedule", "woo_customer_sync_line_count"}
    assert await tables(fresh_database) == expected
    second = run("migrate", env=env)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    conn = await asyncpg.connect(fresh_database)
    try:
        # The password in WOOSYNC_DATABASE_URL is the services' role's (stored as a SCRAM hash).
        stored = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1", APP_ROLE
        )
    finally:
        await conn.close()
    # Only a SCRAM verifier reached the server; recomputed with its salt, it is app-pw's.
    assert stored is not None and stored.startswith("SCRAM-SHA-256$4096:")
    salt = base64.b64decode(stored.split("$")[1].split(":")[1])
    assert stored == scram_sha256_verifier("app-pw", salt=salt)
    other_user = run("migrate", env={**env, "WOOSYNC_DATABASE_URL": fresh_database.replace(
        "://", "://someone:pw@", 1)})
    assert other_user.returncode != 0 and APP_ROLE in other_user.stderr

    created = run("org", "create", "Acme Ltd", env=env)
    assert created.returncode == 0, created.stderr
    printed = json.loads(created.stdout)
    assert set(printed) == {"org_id", "api_key"}
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=1)
    try:
        caller = await authenticate(pool, f"Bearer {printed['api_key']}")
        rows = await pool.fetch("SELECT row_to_json(k)::text AS row FROM api_keys k")
    finally:
        await pool.close()
    assert caller is not None and str(caller.org_id) == printed["org_id"]
    assert len(rows) == 1 and printed["api_key"] not in rows[0]["row"]  # only the hash is kept

    down = run("migrate", "--down", "--steps", "1000", env=env)  # every migration, newest first
    assert down.returncode == 0 and "reverted 0001_core" in down.stdout
    assert await tables(fresh_database) == {"schema_migrations"}


def test_up_runs_all_services_and_stops_them_on_sigterm(settings: Settings) -> None:
    api_port, tracker_port = free_port(), free_port()
    env = {
        **os.environ,
        "WOOSYNC_DATABASE_URL": settings.database_url,
        "WOOSYNC_ADMIN_DATABASE_URL": settings.admin_database_url,
        "WOOSYNC_NAMESPACE": settings.namespace,
        "WOOSYNC_API_PORT": str(api_port),
        "WOOSYNC_TRACKER_PORT": str(tracker_port),
        "WOOSYNC_FETCHER_PORT": "0",
        "WOOSYNC_SYNCER_PORT": "0",
        "WOOSYNC_LOG_FORMAT": "text",  # as on a terminal: prefixed lines
    }
    process = subprocess.Popen([*WOOSYNC, "up"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        ready = set()
        while time.monotonic() < deadline and len(ready) < 2:
            for port in {api_port, tracker_port} - ready:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        ready.add(port)
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        assert len(ready) == 2, "api and tracker never became ready"
        children = psutil.Process(process.pid).children(recursive=True)
        names = {" ".join(c.cmdline()[-2:]) for c in children}
        assert {f"-m services.{s}" for s in ("api", "fetcher", "syncer", "tracker")} <= names
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert time.monotonic() - started < 15
        assert process.returncode == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        for service in ("api", "fetcher", "syncer", "tracker"):
            assert f"{service:<8}|" in output  # logs are interleaved and prefixed
        assert "all services stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
