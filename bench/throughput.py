"""End-to-end throughput and memory, next to a floor measured in the same run.

For each store size: the *floor* reads every page of the simulated store with the same client
and concurrency as the fetcher and does nothing else; the *pipeline* runs the four services as
real processes (api, fetcher, syncer, tracker) and syncs the same store into a fresh database,
timed from the start request to the SSE ``complete`` event. Memory is each service's peak RSS,
sampled every 100 ms. Run: ``python -m bench.throughput [--sizes 10000 100000]``.

``--profile DIR`` also samples each service's stacks with py-spy while the job runs and writes
one collapsed-stack file per service (``DIR/<service>-<size>.txt``, flamegraph input), and a
summary of the functions that hold the most samples (``python -m bench.profile DIR/...``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import httpx
import psutil

from bench.stack import drop, fresh_stack
from shared import db
from shared.auth import create_org
from shared.woocommerce import StoreConfig, WooClient
from tools.woosim.testing import spawn_simulator
from woosync.progress import follow, wait_ready
from woosync.supervisor import SERVICES, Supervisor

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"


@dataclass
class Result:
    customers: int
    floor_s: float = 0.0  # the faster of the two floor reads
    floor_runs_s: tuple[float, ...] = ()
    pipeline_s: float = 0.0
    synced: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)


async def measure_floor(sim: object, *, concurrency: int, per_page: int) -> tuple[float, int]:
    config = StoreConfig(
        url=sim.url, consumer_key=sim.consumer_key,  # type: ignore[attr-defined]
        consumer_secret=sim.consumer_secret, auth="oauth1",  # type: ignore[attr-defined]
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


INFRASTRUCTURE = {"postgres": "postgres", "beam.smp": "rabbitmq"}


def infrastructure_cpu() -> dict[str, float]:
    """CPU seconds used so far by PostgreSQL's and RabbitMQ's processes on this machine."""
    used: dict[str, float] = dict.fromkeys(INFRASTRUCTURE.values(), 0.0)
    for process in psutil.process_iter(["name", "cpu_times"]):
        label = INFRASTRUCTURE.get(process.info["name"] or "")
        if label and process.info["cpu_times"] is not None:
            used[label] += sum(process.info["cpu_times"][:2])
    return used


async def sample_processes(supervisor: Supervisor, result: Result, stop: asyncio.Event) -> None:
    """Peak RSS and CPU time used since the job started, per service; and the CPU time
    PostgreSQL and RabbitMQ used meanwhile (the whole machine's: run on a quiet machine)."""
    processes = {name: psutil.Process(pid) for name, pid in supervisor.pids().items()}
    base = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    infra_base = infrastructure_cpu()
    while not stop.is_set():
        for name, process in processes.items():
            try:
                rss = process.memory_info().rss / 2**20
                result.cpu_s[name] = sum(process.cpu_times()[:2]) - base[name]
            except psutil.Error:
                continue
            result.peak_rss_mb[name] = max(result.peak_rss_mb.get(name, 0.0), rss)
        await asyncio.sleep(0.1)
    for label, seconds in infrastructure_cpu().items():
        result.cpu_s[label] = seconds - infra_base[label]


async def start_profilers(
    supervisor: Supervisor, directory: str, size: int, *, idle: bool = True
) -> list[asyncio.subprocess.Process]:
    """One py-spy per service: wall-clock samples with idle frames included, so that waiting
    shows; or (``idle`` False) only the samples of threads on the CPU."""
    os.makedirs(directory, exist_ok=True)
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = beside if os.path.exists(beside) else "py-spy"
    spies = []
    for name, pid in supervisor.pids().items():
        spies.append(await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(pid), "--rate", "200", *(["--idle"] if idle else []),
            "--format", "raw",
            "--output", os.path.join(directory, f"{name}-{size}.txt"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        ))
    return spies


async def stop_profilers(spies: list[asyncio.subprocess.Process]) -> None:
    for spy in spies:
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)
    for spy in spies:
        await spy.wait()


async def run_pipeline(
    sim: object, result: Result, *, concurrency: int, per_page: int, profile: str | None = None,
    profile_idle: bool = True,
) -> None:
    fresh = await fresh_stack("bench")
    dsn, env = fresh.dsn, fresh.env
    supervisor = Supervisor(SERVICES, env=env, colour=False, out=sys.stderr)
    stack = asyncio.create_task(supervisor.run())
    stop = asyncio.Event()
    try:
        api = f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}"
        await wait_ready(api + "/readyz")
        await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
        pool = await db.create_pool(dsn, min_size=1, max_size=1)
        org_id, key = await create_org(pool, "bench")
        sampler = asyncio.create_task(sample_processes(supervisor, result, stop))
        spies = (
            await start_profilers(supervisor, profile, result.customers, idle=profile_idle)
            if profile else []
        )
        body = {
            "action": "start", "org_id": str(org_id),
            "config": {"url": sim.url, "consumer_key": sim.consumer_key,  # type: ignore[attr-defined]
                       "consumer_secret": sim.consumer_secret, "auth": "oauth1"},  # type: ignore[attr-defined]
            "options": {"batch_size": per_page, "concurrency": concurrency},
        }
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(api + ROUTE, json=body,
                                         headers={"Authorization": f"Bearer {key}"})
        response.raise_for_status()
        final: dict = {}
        async for _event, status in follow(response.json()["progress_url"], timeout_s=3600):
            final = status
        result.pipeline_s = time.perf_counter() - started
        await stop_profilers(spies)
        result.synced = await pool.fetchval("SELECT count(*) FROM customer")
        await pool.close()
        stop.set()
        await sampler
        if final.get("state") != "done":
            raise RuntimeError(f"job ended {final.get('state')}: {final.get('last_error')}")
    finally:
        stop.set()
        supervisor.stop()
        await stack
        await drop(fresh)


async def main(
    sizes: list[int], concurrency: int, latency_ms: int, profile: str | None, profile_idle: bool,
    per_page: int = 100,
) -> None:
    results = []
    for size in sizes:
        with spawn_simulator(customers=size, seed=1, latency_ms=latency_ms) as sim:
            result = Result(size)
            before, read = await measure_floor(sim, concurrency=concurrency, per_page=per_page)
            assert read == size, f"floor read {read} of {size}"
            await run_pipeline(
                sim, result, concurrency=concurrency, per_page=per_page, profile=profile,
                profile_idle=profile_idle,
            )
            after, read = await measure_floor(sim, concurrency=concurrency, per_page=per_page)
            assert read == size, f"floor read {read} of {size}"
            result.floor_runs_s = (before, after)
            result.floor_s = min(before, after)
        results.append(result)
        report([result], concurrency, latency_ms, per_page)
    print("\n== summary ==")
    report(results, concurrency, latency_ms, per_page)


TARGET_PER_S = 6_000  # issue 12, item 2: 100,000 customers with no store latency, this machine
TARGET_RSS_MB = 150.0  # each service's peak
# The same target in proportion to the floor: the issue's woosync read 2,395 customers/s where a
# plain client read 22,700 (100,000 in 4.4 s), 0.105 of its floor; 2.5x that is 0.26. A strict
# reading: the floor is read by woosync's own store client, which got faster since (in nine
# alternating pairs the issue's code read its store at 22,500-33,300/s, the current code at
# 28,300-42,800/s), so this ratio moves against the code it measures. bench.speedup runs the
# issue's code itself.
ISSUE_RATIO = 2_395 / (100_000 / 4.4)
TARGET_GAIN = 2.5


def report(results: list[Result], concurrency: int, latency_ms: int, per_page: int = 100) -> None:
    print(f"concurrency {concurrency}, store latency {latency_ms} ms/page, {per_page} per page; "
          f"targets: >= {TARGET_PER_S:,} customers/s, each service < {TARGET_RSS_MB:.0f} MB; "
          f"in proportion (strict: the floor's client got faster too; bench.speedup runs the "
          f"issue's code): ratio to floor >= {TARGET_GAIN} x the issue's {ISSUE_RATIO:.3f} "
          f"= {TARGET_GAIN * ISSUE_RATIO:.2f}")
    print("floor: the faster of two reads by the client alone, before and after the pipeline")
    names = ", ".join(SERVICES)
    cpu_names = ", ".join((*SERVICES, *INFRASTRUCTURE.values()))
    header = (f"{'customers':>10} {'floor c/s':>16} {'pipeline c/s':>13} {'ratio':>6} "
              f"{'vs issue':>8} {'vs target':>9} {'synced':>8}  "
              f"peak RSS MB ({names})  CPU s ({cpu_names})")
    print(header)
    for r in results:
        floor = r.customers / r.floor_s
        runs = "/".join(f"{r.customers / s / 1000:.0f}k" for s in r.floor_runs_s)
        pipe = r.customers / r.pipeline_s
        rss = ", ".join(f"{r.peak_rss_mb.get(s, 0):.0f}" for s in SERVICES)
        cpu = ", ".join(f"{r.cpu_s.get(s, 0):.1f}" for s in (*SERVICES, *INFRASTRUCTURE.values()))
        print(f"{r.customers:>10,} {floor:>7,.0f} {runs:>8} {pipe:>13,.0f} {pipe / floor:>6.2f} "
              f"{pipe / floor / ISSUE_RATIO:>7.2f}x {pipe / TARGET_PER_S:>8.2f}x {r.synced:>8,}  "
              f"{rss:<{len(names) + 14}}{cpu}")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-ms", type=int, default=20, help="simulated store time per page")
    parser.add_argument("--per-page", type=int, default=100,
                        help="customers per page (WooCommerce allows at most 100)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy each service into DIR")
    parser.add_argument("--profile-cpu", action="store_true",
                        help="sample only threads on the CPU (default: waiting included)")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.concurrency, args.latency_ms, args.profile,
                     not args.profile_cpu, args.per_page))
