"""Soak: a large sync through store faults while services keep getting killed.

Syncs one simulated store (100,000 customers by default) twice, each time into a fresh database
with the four services run by the ``woosync up`` supervisor (which restarts a service that
exits): first without faults, then with transient store faults on 5% of the requests (429 with
``Retry-After``, 500/502/503/504, connections cut mid-body, bodies that are not JSON) while a
random service is SIGKILLed every 20 seconds. Prints the customers lost and duplicated (both
must be 0; the exit status is 1 otherwise) and both wall times, start request to job ``done``.

Run: ``python -m bench.soak [--customers 100000] [--kill-every 20] [--fault-rate 0.05]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from bench.stack import drop, fresh_stack
from shared import db
from shared.auth import create_org
from tools.woosim.testing import SimHandle, spawn_simulator
from woosync.progress import wait_ready
from woosync.supervisor import SERVICES, Supervisor

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
JOB_TIMEOUT_S = 3600.0


@dataclass
class Run:
    label: str
    wall_s: float = 0.0
    state: str = ""
    last_error: str | None = None
    counts: tuple[int, int, int] = (0, 0, 0)  # total, done, failed
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    stale: int = 0
    kills: list[str] = field(default_factory=list)
    store_requests: int = 0
    store_faults: int = 0


def fault_config(rate: float) -> dict[str, float]:
    """``rate`` of the requests fail, transiently: 429 (1/5), 5xx (2/5), cut (1/5), bad JSON."""
    return {
        "rate_429": rate / 5,
        "rate_5xx": 2 * rate / 5,
        "rate_cut": rate / 5,
        "rate_bad_json": rate / 5,
        "retry_after": 1,
    }


async def kill_now_and_then(
    supervisor: Supervisor, run: Run, every_s: float, rng: random.Random, started: float
) -> None:
    """SIGKILL a random live service every ``every_s``; the supervisor starts it again."""
    while True:
        await asyncio.sleep(every_s)
        live = supervisor.pids()
        if not live:
            continue
        name = rng.choice(sorted(live))
        with contextlib.suppress(ProcessLookupError):
            os.kill(live[name], signal.SIGKILL)
        run.kills.append(f"{time.perf_counter() - started:6.1f}s {name}")
        print(f"  {run.kills[-1]} killed", flush=True)


async def wait_final(dsn: str, job_id: str) -> asyncpg.Record:
    """Polls the job row on a fresh connection each time, so a database restart (another test
    may cause one) only delays the answer."""
    deadline = time.perf_counter() + JOB_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                row = await conn.fetchrow(
                    "SELECT state, total, done_count, failed_count, last_error "
                    "FROM woo_customer_sync_queue WHERE id = $1::uuid",
                    job_id,
                )
            finally:
                await conn.close()
        except Exception as exc:  # the server restarting: any error, try again
            print(f"  (database unavailable: {type(exc).__name__}; waiting)", flush=True)
            await asyncio.sleep(1)
            continue
        if row["state"] in ("done", "failed"):
            return row
        await asyncio.sleep(0.5)
    raise TimeoutError(f"job {job_id} not final after {JOB_TIMEOUT_S:.0f}s")


async def check(dsn: str, org_id: uuid.UUID, store: dict[int, Any], run: Run) -> None:
    """Lost, duplicated, extra and stale customers of the org against the store."""
    conn = await db.connect(dsn)
    try:
        rows = await conn.fetch("SELECT woo_id, raw FROM customer WHERE org_id = $1", org_id)
    finally:
        await conn.close()
    ids = [r["woo_id"] for r in rows]
    run.duplicated = len(ids) - len(set(ids))
    run.lost = len(set(store) - set(ids))
    run.extra = len(set(ids) - set(store))
    run.stale = sum(1 for r in rows if r["woo_id"] in store and r["raw"] != store[r["woo_id"]])


async def sync_once(
    sim: SimHandle, store: dict[int, Any], run: Run, *, kill_every_s: float | None, seed: int,
    logs: Any,
) -> None:
    fresh = await fresh_stack("soak")
    dsn, env = fresh.dsn, fresh.env
    supervisor = Supervisor(SERVICES, env=env, colour=False, out=logs)
    stack = asyncio.create_task(supervisor.run())
    killer: asyncio.Task[None] | None = None
    try:
        api = f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}"
        await wait_ready(api + "/readyz")
        await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        try:
            org_id, key = await create_org(pool, "soak")
        finally:
            await pool.close()
        body = {
            "action": "start", "org_id": str(org_id),
            "config": {"url": sim.url, "consumer_key": sim.consumer_key,
                       "consumer_secret": sim.consumer_secret, "auth": "oauth1"},
            "options": {"batch_size": 100, "concurrency": 4},
        }
        await sim.reset_stats()
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=120) as client:
            response = await client.post(
                api + ROUTE, json=body, headers={"Authorization": f"Bearer {key}"}
            )
        response.raise_for_status()
        job_id = response.json()["job_id"]
        if kill_every_s:
            killer = asyncio.create_task(
                kill_now_and_then(supervisor, run, kill_every_s, random.Random(seed), started)
            )
        row = await wait_final(dsn, job_id)
        run.wall_s = time.perf_counter() - started
        if killer is not None:
            killer.cancel()
        run.state, run.last_error = row["state"], row["last_error"]
        run.counts = (row["total"], row["done_count"], row["failed_count"])
        stats = await sim.stats()
        run.store_requests = stats["requests"]
        run.store_faults = sum(n for kind, n in stats["by_fault"].items() if kind != "none")
        await check(dsn, org_id, store, run)
    finally:
        if killer is not None:
            killer.cancel()
        supervisor.stop()
        await stack
        await drop(fresh)


def report(run: Run) -> None:
    total, done, failed = run.counts
    print(
        f"  {run.label}: job {run.state} in {run.wall_s:.1f} s ({total:,} lines, {done:,} done, "
        f"{failed:,} failed); store asked {run.store_requests:,} times, {run.store_faults:,} "
        f"faults; {len(run.kills)} kills"
    )
    if run.last_error:
        print(f"  last_error: {run.last_error}")
    if run.extra or run.stale:
        print(f"  customers not in the store: {run.extra}, differing from it: {run.stale}")
    sys.stdout.flush()


async def main(customers: int, kill_every_s: float, fault_rate: float, seed: int) -> int:
    print(
        f"soak: {customers:,} customers; faulty run: {fault_rate:.0%} transient store faults, "
        f"a random service SIGKILLed every {kill_every_s:g} s"
    )
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for reading afterwards
        "w", prefix="woosync-soak-", suffix=".log", delete=False
    )
    with log_file as logs, spawn_simulator(customers=customers, seed=seed) as sim:
        print(f"  service logs: {logs.name}")
        store = {c["id"]: c for c in await sim.customers()}
        clean = Run("without faults")
        await sync_once(sim, store, clean, kill_every_s=None, seed=seed, logs=logs)
        report(clean)
        await sim.set_faults(seed=seed, **fault_config(fault_rate))
        faulty = Run("with faults and kills")
        await sync_once(sim, store, faulty, kill_every_s=kill_every_s, seed=seed, logs=logs)
        report(faulty)

    print(f"customers lost:        {faulty.lost}")
    print(f"customers duplicated:  {faulty.duplicated}")
    print(f"wall time:             {faulty.wall_s:.1f} s")
    print(f"wall time, no faults:  {clean.wall_s:.1f} s")
    ok = all(
        r.state == "done" and r.lost == r.duplicated == r.extra == r.stale == 0
        for r in (clean, faulty)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.customers, args.kill_every, args.fault_rate, args.seed)))
