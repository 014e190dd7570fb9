"""Adaptive per-store concurrency: woosync with default options against stores of a known
capacity, next to floors measured in the same run.

Two simulated stores, served over HTTPS (a CA made at start, trusted by the services through
``SSL_CERT_FILE``), each answering a page in ``--latency-ms``:

(a) flat: latency stays flat up to ``--flat`` requests in flight and grows in proportion beyond.
    Its floor reads every page with ``--flat`` at once and does nothing else. woosync syncs it
    twice with default options (no concurrency), into a fresh database: the first sync learns
    the store's limit, the second starts from it; a third, with ``"concurrency": 4``, is the
    fixed concurrency of before, in the same conditions. Airbyte's time is the one quoted in
    issue 12 (56.2 s for 20,000 customers at 300 ms a page), not measured here.
(b) refusing: a request arriving while ``--refuse-above`` are in flight is answered 429 with
    ``Retry-After: 1``. Its floor reads every page with ``--refuse-above`` at once (never
    refused). woosync syncs it once with default options; no line may fail.

Times run from the start request to the progress stream's ``complete``, all four services
running as real processes. Run: ``python -m bench.adaptive`` (defaults: 20,000 customers,
300 ms, flat up to 16, 429 above 4).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from bench.stack import drop, fresh_stack, start_body
from shared import db
from shared.auth import create_org
from shared.woocommerce import StoreConfig, WooClient
from tools.woosim.testing import SimHandle, spawn_simulator
from woosync.progress import follow, wait_ready
from woosync.supervisor import SERVICES, Supervisor

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
AIRBYTE_S = 56.2  # issue 12: Airbyte's WooCommerce source, 20,000 customers at 300 ms a page


@dataclass
class Sync:
    seconds: float
    fetch_s: float  # from the job's start to the fetcher's last page
    state: str
    synced: int
    failed_lines: int
    learned: int | None
    peak_in_flight: int
    refused: int


async def floor(sim: SimHandle, concurrency: int, per_page: int = 100) -> tuple[float, int]:
    """Every page read with ``concurrency`` at once, nothing else done."""
    config = StoreConfig(
        url=sim.url,
        consumer_key=sim.consumer_key,
        consumer_secret=sim.consumer_secret,
        auth="basic",
        verify_tls=str(sim.ca_cert),
    )
    started = time.perf_counter()
    async with WooClient(config, max_connections=concurrency) as client:
        first = await client.list_customers(page=1, per_page=per_page)
        limit = asyncio.Semaphore(concurrency)

        async def page(n: int) -> int:
            async with limit:
                return len((await client.list_customers(page=n, per_page=per_page)).customers)

        counts = await asyncio.gather(*(page(n) for n in range(2, (first.total_pages or 1) + 1)))
    return time.perf_counter() - started, len(first.customers) + sum(counts)


async def woosync_syncs(sim: SimHandle, options: list[dict[str, Any]]) -> list[Sync]:
    """One sync of the store per entry of ``options`` (``{}``: default options), one after the
    other, in one fresh stack (so later ones start from what the first learned)."""
    fresh = await fresh_stack("adaptive")
    env = {**fresh.env, "SSL_CERT_FILE": str(sim.ca_cert), "WOOSYNC_LOG_LEVEL": "INFO"}
    supervisor = Supervisor(SERVICES, env=env, colour=False, out=sys.stderr)
    stack = asyncio.create_task(supervisor.run())
    results = []
    try:
        api = f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}"
        await wait_ready(api + "/readyz")
        await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
        pool = await db.create_pool(fresh.dsn, min_size=1, max_size=1)
        org_id, key = await create_org(pool, "bench")
        for option in options:
            body = start_body(org_id, sim, option, auth="basic")
            await sim.reset_stats()
            started = time.perf_counter()
            async with httpx.AsyncClient(timeout=60) as client:
                response = await client.post(
                    api + ROUTE, json=body, headers={"Authorization": f"Bearer {key}"}
                )
            response.raise_for_status()
            job_id = UUID(response.json()["job_id"])
            final: dict[str, Any] = {}
            async for _event, status in follow(response.json()["progress_url"], timeout_s=3600):
                final = status
            seconds = time.perf_counter() - started
            stats = await sim.stats()
            results.append(
                Sync(
                    seconds=seconds,
                    fetch_s=await pool.fetchval(
                        "SELECT extract(epoch FROM fetch_done_at - created_at)::float8 "
                        "FROM woo_customer_sync_queue WHERE id = $1",
                        job_id,
                    ),
                    state=str(final.get("state")),
                    synced=await pool.fetchval("SELECT count(*) FROM customer"),
                    failed_lines=await pool.fetchval(
                        "SELECT count(*) FROM woo_customer_sync_queue_line "
                        "WHERE job_id = $1 AND state = 'failed'",
                        job_id,
                    ),
                    learned=await pool.fetchval("SELECT max(concurrency) FROM woosync_store_limit"),
                    peak_in_flight=stats["peak_in_flight"],
                    refused=stats["by_status"].get("429", 0),
                )
            )
        await pool.close()
    finally:
        supervisor.stop()
        await stack
        await drop(fresh)
    return results


def line(label: str, sync: Sync, floor_s: float) -> str:
    return (
        f"  {label:<28} {sync.seconds:7.2f} s   {sync.seconds / floor_s:5.2f}x floor   "
        f"(read in {sync.fetch_s:.2f} s) state {sync.state}, synced {sync.synced:,}, "
        f"failed lines {sync.failed_lines}, "
        f"learned {sync.learned}, peak in flight {sync.peak_in_flight}, 429s {sync.refused}"
    )


async def main(args: argparse.Namespace) -> None:
    pages = -(-args.customers // 100)
    latency_s = args.latency_ms / 1000
    print(
        f"adaptive concurrency: {args.customers:,} customers ({pages} pages of 100), "
        f"{args.latency_ms} ms a page, HTTPS, default options (no concurrency)"
    )
    sys.stdout.flush()

    flat = {"flat_in_flight": args.flat}
    with spawn_simulator(
        customers=args.customers, seed=1, tls=True, latency_ms=args.latency_ms, faults=flat
    ) as sim:
        floor_s, read = await floor(sim, args.flat)
        assert read == args.customers, f"the floor read {read} of {args.customers}"
        first, second, fixed = await woosync_syncs(sim, [{}, {}, {"concurrency": 4}])
    print(f"(a) store flat up to {args.flat} in flight")
    print(
        f"  floor, {args.flat} at once (measured) {floor_s:7.2f} s   "
        f"(pages x latency / {args.flat} = {pages * latency_s / args.flat:.2f} s)"
    )
    print(line("woosync, first sync", first, floor_s))
    print(line("woosync, second (learned)", second, floor_s))
    print(line("woosync, concurrency 4 fixed", fixed, floor_s))
    print(
        f"  Airbyte (quoted, issue 12)   {AIRBYTE_S:7.2f} s   woosync is "
        f"{AIRBYTE_S / first.seconds:.1f}x faster (first sync), "
        f"{AIRBYTE_S / second.seconds:.1f}x (second); target >= 7x"
    )
    sys.stdout.flush()

    refusing = {"max_in_flight": args.refuse_above, "retry_after": 1}
    with spawn_simulator(
        customers=args.customers, seed=2, tls=True, latency_ms=args.latency_ms, faults=refusing
    ) as sim:
        floor_s, read = await floor(sim, args.refuse_above)
        assert read == args.customers, f"the floor read {read} of {args.customers}"
        (sync,) = await woosync_syncs(sim, [{}])
    print(f"(b) store answering 429 (Retry-After: 1) above {args.refuse_above} in flight")
    print(
        f"  floor, {args.refuse_above} at once (measured)  {floor_s:7.2f} s   "
        f"(pages x latency / {args.refuse_above} = {pages * latency_s / args.refuse_above:.2f} s)"
    )
    print(line("woosync, first sync", sync, floor_s))
    print(f"  ratio {sync.seconds / floor_s:.2f} (target <= 1.3), failed lines {sync.failed_lines}")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--flat", type=int, default=16, help="store (a): flat up to N in flight")
    parser.add_argument("--refuse-above", type=int, default=4, help="store (b): 429 above N")
    asyncio.run(main(parser.parse_args()))
