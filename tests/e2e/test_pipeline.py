"""The whole pipeline as real processes: four services, the simulator, RabbitMQ and PostgreSQL.

Syncs 2,000 simulated customers of every role, follows the SSE stream from the first event to
``complete``, checks every ``customer`` row field by field against the store, then syncs again
and checks that nothing was written.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from shared import db
from shared.db import APP_ROLE
from shared.settings import Settings
from tools.woosim.testing import spawn_simulator
from woosync.progress import follow, wait_ready
from woosync.supervisor import SERVICES, Supervisor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
CUSTOMERS = 2_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(settings: Settings) -> dict[str, str]:
    return {
        "WOOSYNC_DATABASE_URL": settings.database_url,
        "WOOSYNC_AMQP_URL": settings.amqp_url,
        "WOOSYNC_NAMESPACE": settings.namespace,
        "WOOSYNC_SECRET_KEY": "e2e-secret-key",
        "WOOSYNC_API_PORT": str(free_port()),
        "WOOSYNC_TRACKER_PORT": str(free_port()),
        "WOOSYNC_FETCHER_PORT": str(free_port()),
        "WOOSYNC_SYNCER_PORT": str(free_port()),
        "WOOSYNC_RETRY_DELAYS_MS": "[200,400,800]",
        "WOOSYNC_ALLOW_PRIVATE_URLS": "true",
    }


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    env = service_env(settings)
    log_path = tmp_path / "services.log"
    with log_path.open("w") as log:
        supervisor = Supervisor(SERVICES, env=env, colour=False, out=log)
        task = asyncio.create_task(supervisor.run())
        try:
            await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}/readyz")
            await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
            # Each service leads a session of its own (the scheduler weighs it apart).
            assert {name: os.getsid(pid) for name, pid in supervisor.pids().items()} == (
                supervisor.pids()
            )
            yield env
        finally:
            supervisor.stop()
            await asyncio.wait_for(task, 30)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-4000:]


def create_org(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """An org made by the operator's command, which connects as the schema's owner."""
    out = subprocess.run(
        [sys.executable, "-m", "woosync.cli", "org", "create", "e2e"],
        env={**os.environ, **env, "WOOSYNC_ADMIN_DATABASE_URL": settings.admin_database_url},
        capture_output=True, text=True, check=True, timeout=60,
    )
    return json.loads(out.stdout)


def gmt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None


async def start_sync(env: dict[str, str], org: dict[str, str], sim: Any, key: str) -> dict:
    body = {
        "action": "start",
        "org_id": org["org_id"],
        "config": {
            "url": sim.url, "consumer_key": sim.consumer_key,
            "consumer_secret": sim.consumer_secret, "auth": "oauth1",
        },
        "options": {"batch_size": 100, "concurrency": 4, "idempotency_key": key},
    }
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}{ROUTE}", json=body,
            headers={"Authorization": f"Bearer {org['api_key']}"},
        )
    assert response.status_code == 202, response.text
    return response.json()


async def follow_to_end(progress_url: str) -> list[tuple[str, dict]]:
    events = []
    async for event in follow(progress_url, timeout_s=120):
        events.append(event)
    return events


async def test_sync_2000_customers_end_to_end(settings: Settings, stack: dict[str, str]) -> None:
    org = create_org(settings, stack)
    with spawn_simulator(customers=CUSTOMERS, seed=11) as sim:
        store = {c["id"]: c for c in sim.customers_sync()}
        job = await asyncio.wait_for(start_sync(stack, org, sim, "first"), 60)
        events = await asyncio.wait_for(follow_to_end(job["progress_url"]), 180)

        # The stream: progress first, counts never go back, one final `complete`.
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "progress" and kinds[-1] == "complete"
        assert kinds.count("complete") == 1
        done_counts = [status["done"] for _, status in events]
        assert done_counts == sorted(done_counts)
        final = events[-1][1]
        assert final["state"] == "done", final
        assert (final["total"], final["done"], final["failed"], final["pending"]) == (
            CUSTOMERS, CUSTOMERS, 0, 0,
        )
        assert final["percent"] == 100.0

        conn = await db.connect(settings.admin_database_url)
        try:
            rows = await conn.fetch("SELECT *, xmin::text AS version FROM customer ORDER BY woo_id")
            roles = {r["role"] for r in rows}
            assert len(rows) == CUSTOMERS and [r["woo_id"] for r in rows] == sorted(store)
            for row in rows:
                assert_row_matches(row, store[row["woo_id"]], org["org_id"])
            assert {"customer", "administrator", "subscriber", "shop_manager"} <= roles
            line_states = await conn.fetch(
                "SELECT state, count(*) FROM woo_customer_sync_queue_line GROUP BY state"
            )
            assert [(r["state"], r["count"]) for r in line_states] == [("done", CUSTOMERS)]

            # The same sync again: the job completes and not one customer row is rewritten.
            again = await start_sync(stack, org, sim, "second")
            assert again["job_id"] != job["job_id"]
            second = await asyncio.wait_for(follow_to_end(again["progress_url"]), 180)
            assert second[-1][1]["state"] == "done" and second[-1][1]["done"] == CUSTOMERS
            after = await conn.fetch("SELECT woo_id, xmin::text AS version FROM customer")
            assert {r["woo_id"]: r["version"] for r in after} == {
                r["woo_id"]: r["version"] for r in rows
            }

            # Every service reached the database as the role row-level security binds.
            sessions = await conn.fetch(
                """SELECT DISTINCT application_name, usename FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name LIKE 'woosync-%'"""
            )
            # (The tracker's cleanup leader holds a session of its own: woosync-tracker-cleanup.)
            assert {r["usename"] for r in sessions} == {APP_ROLE}
            assert {r["application_name"] for r in sessions} >= {
                f"woosync-{service}" for service in SERVICES
            }
        finally:
            await conn.close()


def assert_row_matches(row: asyncpg.Record, source: dict[str, Any], org_id: str) -> None:
    assert str(row["org_id"]) == org_id
    assert row["email"] == source["email"]
    assert row["first_name"] == source["first_name"]
    assert row["last_name"] == source["last_name"]
    assert row["username"] == source["username"]
    assert row["role"] == source["role"]
    assert row["company"] == source["billing"]["company"]
    assert row["phone"] == source["billing"]["phone"]
    assert row["billing"] == source["billing"]
    assert row["shipping"] == source["shipping"]
    assert row["meta_data"] == source["meta_data"]
    assert row["is_paying_customer"] == source["is_paying_customer"]
    assert row["avatar_url"] == source["avatar_url"]
    assert row["woo_date_created"] == gmt(source["date_created_gmt"])
    assert row["woo_date_modified"] == gmt(source["date_modified_gmt"])
    assert row["raw"] == source
