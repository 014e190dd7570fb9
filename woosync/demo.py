"""``woosync demo``: the whole thing in one command.

Starts a simulated store (HTTPS, generated certificate), the four services, creates an org,
starts a sync of the store, shows its progress from the SSE stream, then checks the result
against the store and prints a summary. Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared import db
from shared.auth import create_org
from shared.lifecycle import JobState
from shared.settings import Settings
from tools.woosim.testing import spawn_simulator
from woosync.progress import follow, wait_ready
from woosync.supervisor import Supervisor

START_ROUTE = "/api/v1/integrations/woocommerce/sync/customers"


async def count_customers(settings: Settings, org_id: str) -> tuple[int, int]:
    conn = await db.connect(settings.admin_database_url, operator=True)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM customer WHERE org_id = $1", org_id)
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT woo_id) FROM customer WHERE org_id = $1", org_id
        )
    finally:
        await conn.close()
    return rows, distinct


async def run_demo(*, customers: int, seed: int, service_log: TextIO) -> int:
    console = Console()
    os.environ.setdefault("WOOSYNC_ALLOW_PRIVATE_URLS", "true")  # the simulator is on 127.0.0.1
    settings = Settings()
    console.print(f"[bold]woosync demo[/]: {customers:,} simulated customers")
    await db.migrate_up(settings.admin_database_url, app_dsn=settings.database_url)
    with spawn_simulator(customers=customers, seed=seed, tls=True) as store:
        console.print(f"store simulator at {store.url}")
        supervisor = Supervisor(colour=False, out=service_log)
        stack = asyncio.create_task(supervisor.run())
        try:
            await wait_ready(f"{settings.api_base()}/readyz")
            await wait_ready(f"{settings.tracker_base()}/readyz")
            pool = await db.create_pool(
                settings.admin_database_url, min_size=1, max_size=1, operator=True
            )
            try:
                org_id, api_key = await create_org(pool, "demo")
            finally:
                await pool.close()
            started = time.monotonic()
            job = await _start_sync(settings, str(org_id), api_key, store)
            final = await _show_progress(console, job["progress_url"])
            elapsed = time.monotonic() - started
            rows, distinct = await count_customers(settings, str(org_id))
        finally:
            supervisor.stop()
            await stack
    _summary(console, final, elapsed, rows, distinct, customers)
    ok = final["state"] == JobState.DONE and rows == distinct == final["total"] == customers
    return 0 if ok else 1


async def _start_sync(settings: Settings, org_id: str, api_key: str, store: Any) -> dict[str, Any]:
    body = {
        "action": "start",
        "org_id": org_id,
        "config": {
            "url": store.url,
            "consumer_key": store.consumer_key,
            "consumer_secret": store.consumer_secret,
            "auth": "basic",
            "verify_tls": False,  # the simulator's certificate is generated on the spot
        },
        "options": {"batch_size": 100, "concurrency": 4},
    }
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            settings.api_base() + START_ROUTE,
            json=body,
            headers={"Authorization": f"Bearer {api_key}"},
        )
    if response.status_code != 202:
        raise RuntimeError(f"start failed: {response.status_code} {response.text}")
    return response.json()


async def _show_progress(console: Console, progress_url: str) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
    )
    status: dict[str, Any] = {}
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("syncing", total=None, failed=0)
        async for _event, status in follow(progress_url):
            bar.update(
                task,
                completed=status["done"],
                total=status["total"] or None,
                failed=status["failed"],
                description=status["state"],
            )
    return status


def _summary(
    console: Console, final: dict[str, Any], elapsed: float, rows: int, distinct: int, expected: int
) -> None:
    table = Table(title="sync summary", show_header=False)
    table.add_row("job", str(final.get("job_id")))
    table.add_row("state", str(final.get("state")))
    table.add_row("customers in store", f"{expected:,}")
    done, failed = final.get("done", 0), final.get("failed", 0)
    table.add_row("synced (done / failed)", f"{done:,} / {failed:,}")
    table.add_row("rows in customer", f"{rows:,} ({distinct:,} distinct)")
    table.add_row("wall time", f"{elapsed:.1f} s")
    table.add_row("throughput", f"{(done / elapsed if elapsed else 0):,.0f} customers/s")
    console.print(table)
