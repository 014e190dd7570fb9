"""Big stores: one very large store, and many orgs syncing at once, each figure beside its floor
and target. The four services run as real processes (as in ``bench.throughput``), on a fresh
database and broker namespace per run.

``--customers N`` (one store of N customers, default 1,000,000): the time from the start request
to the job's end beside the *floor* (reading every page of the store with the same client and
concurrency, nothing else); exactness (customers in the database and the job's done count
against the store's total); each service's RSS at 10 %, 50 % and 100 % of the job (flat is the
target) and its peak; the tracker's per-tick read of the job's counts early (about 10 % of the
lines recorded) and late (about 90 %), as rows read and time, beside the floor it replaced (a
count over the job's lines, what every tick cost before migration 0023); and how often the crawl
handed itself on (``WOOSYNC_CRAWL_SLICE_S``, below RabbitMQ's ``consumer_timeout``).

``--orgs K --per-org M`` (K orgs, M customers each, all started at once): each job's duration
(its row's created_at to finished_at), slowest/fastest beside the target 3, whether every org
got exactly its store's customers; with ``--huge H``, the same again with one org's store of H
customers started first (the others start once it has recorded ``--huge-lead`` of its
customers, a quarter by default, so its batches already wait in the syncer's queue), and the
small jobs' durations with and without it (the huge job must not starve them).

The stores are woosim processes: the large one in ``--bulk`` mode (flat memory whatever its
size), the small orgs' one shared by every org (each org has its own connection to it, so its
own customers). Jobs are started with an explicit ``concurrency``, so each reads with its own
workers and no store's adaptive limit is shared. The environment raises what an operator would
raise for such a fleet: the api's store checks at once (``WOOSYNC_MAX_CONCURRENT_STORE_CHECKS``,
default 16: a hundred starts at once would otherwise wait on 503s) and, with ``--prefetch``,
the messages the syncer and the tracker take at once (``WOOSYNC_PREFETCH``; the fetcher's crawls
at once are ``WOOSYNC_FETCHER_PREFETCH``, 256 by default, and its backlog bound
``WOOSYNC_FETCH_BACKLOG_CUSTOMERS``: set them in the environment). The fetcher and the syncer run
at ``--batch-nice`` (10, as docs/operations.md recommends on a shared machine; 0 for one
priority), so the api creating the jobs is not slowed by the crawls of those it created first.

Run: ``python -m bench.big_store --customers 1000000`` and
``python -m bench.big_store --orgs 100 --per-org 1000 --huge 200000`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import psutil

from bench.stack import BenchStack, drop, fresh_stack, start_body
from bench.throughput import measure_floor
from services.tracker import queries as tracker_q
from shared import db
from shared.auth import create_org
from shared.lifecycle import FINAL_JOB_STATES, IN_FLIGHT_LINE_STATES, JobState, sql_in
from tools.woosim.testing import SimHandle, spawn_simulator
from woosync.progress import wait_ready
from woosync.supervisor import SERVICES, Supervisor

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
FINAL = {state.value for state in FINAL_JOB_STATES}
RATIO_TARGET = 3.0
SAMPLE_S = 0.5

# The floor of the tracker's per-tick read: what RECOMPUTE_JOB counted before migration 0023.
LINE_COUNT = """
SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1 AND org_id = $2
"""
COUNTS_NOW = "WITH " + tracker_q._LINE_COUNTS + " SELECT * FROM counts"
LINES_SO_FAR = """
SELECT coalesce(sum(n), 0) FROM woo_customer_sync_line_count WHERE job_id = $1 AND org_id = $2
"""
OPEN_LINES_OF_JOB = f"""
SELECT coalesce(sum(n), 0) FROM woo_customer_sync_line_count
WHERE job_id = $1 AND state IN {sql_in(IN_FLIGHT_LINE_STATES)}
"""
LINES_OF_JOB = "SELECT coalesce(sum(n), 0) FROM woo_customer_sync_line_count WHERE job_id = $1"
COUNTER_ROWS = """
SELECT count(*) FROM woo_customer_sync_line_count WHERE job_id = $1 AND org_id = $2
"""


@dataclass
class Stack:
    """A running set of the four services on a fresh database."""

    fresh: BenchStack
    supervisor: Supervisor
    task: asyncio.Task[int]
    pool: asyncpg.Pool
    api: str


async def start_stack(label: str, extra_env: dict[str, str]) -> Stack:
    fresh = await fresh_stack(label)
    env = {**fresh.env, **extra_env}
    supervisor = Supervisor(SERVICES, env=env, colour=False, out=sys.stderr)
    task = asyncio.create_task(supervisor.run())
    api = f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}"
    await wait_ready(api + "/readyz")
    await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
    pool = await db.create_pool(fresh.dsn, min_size=1, max_size=4)
    return Stack(fresh, supervisor, task, pool, api)


async def stop_stack(stack: Stack) -> None:
    await stack.pool.close()
    stack.supervisor.stop()
    await stack.task
    await drop(stack.fresh)


async def start_job(
    client: httpx.AsyncClient, api: str, org_id: UUID, key: str, sim: SimHandle, concurrency: int
) -> UUID:
    """The start request, retried while the api says to come back (429/503 Retry-After)."""
    body = start_body(org_id, sim, {"batch_size": 100, "concurrency": concurrency})
    for _ in range(120):
        response = await client.post(
            api + ROUTE, json=body, headers={"Authorization": f"Bearer {key}"}
        )
        if response.status_code in (429, 503):
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        return UUID(response.json()["job_id"])
    raise RuntimeError(f"org {org_id}: the api kept refusing the start")


async def job_rows(pool: asyncpg.Pool, jobs: list[UUID]) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT id, org_id, state, total, done_count, failed_count, last_error,
                  extract(epoch FROM created_at) AS created,
                  extract(epoch FROM finished_at) AS finished,
                  extract(epoch FROM fetch_done_at) AS fetched
           FROM woo_customer_sync_queue WHERE id = ANY($1::uuid[])""",
        jobs,
    )


async def wait_final(pool: asyncpg.Pool, jobs: list[UUID], timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await job_rows(pool, jobs)
        if len(rows) == len(jobs) and all(r["state"] in FINAL for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not final after {timeout_s:.0f}s")
        await asyncio.sleep(SAMPLE_S)


# --- one big store ----------------------------------------------------------------------------


@dataclass
class Sample:
    at_s: float
    fraction: float  # of the store's customers settled (the job's done count)
    rss_mb: dict[str, float]


@dataclass
class TickCost:
    label: str
    lines: int
    counter_rows: int
    counters_ms: float
    line_count_ms: float


@dataclass
class BigResult:
    customers: int
    floor_s: float = 0.0
    pipeline_s: float = 0.0
    synced: int = 0
    done_count: int = 0
    state: str = ""
    handed_on: int = 0
    samples: list[Sample] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    ticks: list[TickCost] = field(default_factory=list)


async def timed_ms(run: Callable[[], Awaitable[object]], repeat: int = 9) -> float:
    """The best of ``repeat`` runs: on a busy machine the least disturbed one is the cost."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


async def tick_cost(pool: asyncpg.Pool, label: str, job_id: UUID, org_id: UUID) -> TickCost:
    """The tracker's read of the job's counts now (the sums of its counter rows, in the org's
    transaction as the tracker reads them), beside a count of its lines (the old read)."""
    async with pool.acquire() as conn:

        async def counters() -> object:
            async with conn.transaction():
                await conn.execute("SELECT set_config('woosync.org_id', $1, true)", str(org_id))
                return await conn.fetchrow(COUNTS_NOW, job_id, org_id)

        async def lines() -> object:
            return await conn.fetchval(LINE_COUNT, job_id, org_id)

        return TickCost(
            label,
            lines=await conn.fetchval(LINE_COUNT, job_id, org_id),
            counter_rows=await conn.fetchval(COUNTER_ROWS, job_id, org_id),
            counters_ms=await timed_ms(counters),
            line_count_ms=await timed_ms(lines),
        )


async def watch_big(
    stack: Stack, job_id: UUID, org_id: UUID, result: BigResult, stop: asyncio.Event
) -> None:
    """Every SAMPLE_S: each service's RSS and the job's progress; the tick's cost once about
    10 % and once about 90 % of the store's lines are recorded."""
    processes = {name: psutil.Process(pid) for name, pid in stack.supervisor.pids().items()}
    started = time.perf_counter()
    pending = [(0.10, "early"), (0.90, "late")]
    while not stop.is_set():
        rss: dict[str, float] = {}
        for name, process in processes.items():
            try:
                rss[name] = process.memory_info().rss / 2**20
            except psutil.Error:
                continue
            result.peak_rss_mb[name] = max(result.peak_rss_mb.get(name, 0.0), rss[name])
        row = await stack.pool.fetchrow(
            "SELECT done_count FROM woo_customer_sync_queue WHERE id = $1", job_id
        )
        fraction = (row["done_count"] if row else 0) / result.customers
        result.samples.append(Sample(time.perf_counter() - started, fraction, rss))
        if pending:  # the job's lines, from its counters (a count would load the database)
            lines = await stack.pool.fetchval(LINES_SO_FAR, job_id, org_id)
            if lines >= pending[0][0] * result.customers:
                result.ticks.append(await tick_cost(stack.pool, pending.pop(0)[1], job_id, org_id))
        await asyncio.sleep(SAMPLE_S)


async def run_big(args: argparse.Namespace) -> BigResult:
    result = BigResult(args.customers)
    env = environment(args, orgs=1)
    with spawn_simulator(
        customers=args.customers, seed=1, latency_ms=args.latency_ms, bulk=True
    ) as sim:
        result.floor_s, read = await measure_floor(sim, concurrency=args.concurrency, per_page=100)
        assert read == args.customers, f"floor read {read} of {args.customers}"
        stack = await start_stack("big", env)
        stop = asyncio.Event()
        try:
            org_id, key = await create_org(stack.pool, "big")
            async with httpx.AsyncClient(timeout=60) as client:
                started = time.perf_counter()
                job_id = await start_job(client, stack.api, org_id, key, sim, args.concurrency)
            watcher = asyncio.create_task(watch_big(stack, job_id, org_id, result, stop))
            (row,) = await wait_final(stack.pool, [job_id], args.timeout_s)
            result.pipeline_s = time.perf_counter() - started
            stop.set()
            await watcher
            result.state, result.done_count = row["state"], row["done_count"]
            result.synced = await stack.pool.fetchval(
                "SELECT count(*) FROM customer WHERE org_id = $1", org_id
            )
            result.handed_on = await stack.pool.fetchval(
                "SELECT count(*) FROM woo_sync_activity WHERE job_id = $1 "
                "AND event = 'fetch.handed_on'",
                job_id,
            )
        finally:
            stop.set()
            await stop_stack(stack)
    return result


def rss_at(samples: list[Sample], fraction: float) -> dict[str, float]:
    for sample in samples:
        if sample.fraction >= fraction:
            return sample.rss_mb
    return samples[-1].rss_mb if samples else {}


def report_big(r: BigResult, args: argparse.Namespace) -> None:
    print(f"\n== one store of {r.customers:,} customers ==")
    print(
        f"concurrency {args.concurrency}, store latency {args.latency_ms} ms/page, 100 per page, "
        f"crawl slice {args.crawl_slice_s:g} s"
    )
    floor, pipe = r.customers / r.floor_s, r.customers / r.pipeline_s
    print(
        f"time        {r.pipeline_s:8.1f} s   floor {r.floor_s:.1f} s (read only)   "
        f"{pipe:,.0f} c/s vs floor {floor:,.0f} c/s: ratio {pipe / floor:.2f}"
    )
    exact = r.synced == r.done_count == r.customers and r.state == JobState.DONE
    print(
        f"exact       {'yes' if exact else 'NO'}: {r.synced:,} customers in the database, "
        f"job {r.state} with {r.done_count:,} done, store {r.customers:,}"
    )
    print(f"hand-ons    the crawl handed itself on {r.handed_on} time(s)")
    print(f"RSS MB      {'':>8}" + "".join(f"{s:>9}" for s in SERVICES))
    for label, fraction in (("at 10%", 0.10), ("at 50%", 0.50), ("at 100%", 1.0)):
        rss = rss_at(r.samples, fraction)
        print(f"  {label:<18}" + "".join(f"{rss.get(s, 0):>9.0f}" for s in SERVICES))
    print(f"  {'peak':<18}" + "".join(f"{r.peak_rss_mb.get(s, 0):>9.0f}" for s in SERVICES))
    first = rss_at(r.samples, 0.10)
    growth = {s: r.peak_rss_mb.get(s, 0) / first[s] for s in SERVICES if first.get(s)}
    print(
        "  peak / at 10%     "
        + "".join(f"{growth.get(s, 0):>9.2f}" for s in SERVICES)
        + "   (target: flat, about 1)"
    )
    print("tracker tick: the counts read per tick (counter rows) vs the old count over the lines")
    print(
        f"  {'':<6}{'lines':>10}{'rows read':>11}{'tick ms':>9}{'floor: count ms':>17}"
        "   (ms: best of 9)"
    )
    for t in r.ticks:
        print(
            f"  {t.label:<6}{t.lines:>10,}{t.counter_rows:>11,}{t.counters_ms:>9.2f}"
            f"{t.line_count_ms:>17.2f}"
        )
    if len(r.ticks) == 2:
        early, late = r.ticks
        print(
            f"  late / early: tick {late.counters_ms / early.counters_ms:.2f} "
            f"(target about 1), line count {late.line_count_ms / early.line_count_ms:.2f} "
            f"(grows with the lines)"
        )
    sys.stdout.flush()


# --- many orgs ----------------------------------------------------------------------------------


@dataclass
class FleetResult:
    label: str
    durations_s: list[float]
    read_s: list[float]  # each job's crawl: created_at to fetch_done_at (every page read)
    exact: bool
    failures: list[str]
    huge_s: float | None = None
    huge_backlog: int = 0  # the huge job's lines recorded, not yet settled, as the others start
    created_over_s: float = 0.0  # first to last job created: how "at once" the starts were


async def run_fleet(
    args: argparse.Namespace, small: SimHandle, huge: SimHandle | None
) -> FleetResult:
    stack = await start_stack("fleet", environment(args, orgs=args.orgs + 1))
    try:
        orgs = [await create_org(stack.pool, f"org{n}") for n in range(args.orgs)]
        async with httpx.AsyncClient(timeout=120) as client:
            huge_job = None
            if huge is not None:
                huge_org, huge_key = await create_org(stack.pool, "huge")
                huge_job = await start_job(
                    client, stack.api, huge_org, huge_key, huge, args.concurrency
                )
                await wait_recorded(stack.pool, huge_job, int(args.huge * args.huge_lead))
                backlog = await stack.pool.fetchval(OPEN_LINES_OF_JOB, huge_job)
            jobs = await asyncio.gather(
                *(
                    start_job(client, stack.api, org, key, small, args.concurrency)
                    for org, key in orgs
                )
            )
        rows = await wait_final(stack.pool, list(jobs), args.timeout_s)
        synced = {
            r["org_id"]: r["n"]
            for r in await stack.pool.fetch(
                "SELECT org_id, count(*) AS n FROM customer GROUP BY org_id"
            )
        }
        failures = [
            f"job {r['id']}: {r['state']}, {synced.get(r['org_id'], 0)} synced, "
            f"{r['done_count']} done: {r['last_error']}"
            for r in rows
            if not (r["state"] == JobState.DONE and synced.get(r["org_id"]) == args.per_org)
        ]
        result = FleetResult(
            "with the huge store" if huge else "alone",
            sorted(float(r["finished"] - r["created"]) for r in rows),
            sorted(float(r["fetched"] - r["created"]) for r in rows if r["fetched"] is not None),
            exact=not failures,
            failures=failures,
            created_over_s=float(max(r["created"] for r in rows) - min(r["created"] for r in rows)),
        )
        if huge_job is not None:
            result.huge_backlog = backlog
            (row,) = await wait_final(stack.pool, [huge_job], args.timeout_s)
            result.huge_s = float(row["finished"] - row["created"])
            huge_synced = await stack.pool.fetchval(
                "SELECT count(*) FROM customer WHERE org_id = $1", row["org_id"]
            )
            if not (row["state"] == JobState.DONE and huge_synced == args.huge):
                result.exact = False
                result.failures.append(f"huge job {row['state']}, {huge_synced} synced")
        return result
    finally:
        await stop_stack(stack)


async def wait_recorded(pool: asyncpg.Pool, job_id: UUID, lines: int) -> None:
    """Until the job has recorded that many lines (from its counters): its crawl is under way,
    and its batches wait in the syncer's queue ahead of whatever is started next."""
    async with asyncio.timeout(600):
        while await pool.fetchval(LINES_OF_JOB, job_id) < max(lines, 1):
            await asyncio.sleep(0.1)


def report_fleet(results: list[FleetResult], args: argparse.Namespace) -> None:
    print(f"\n== {args.orgs} orgs x {args.per_org:,} customers, all started at once ==")
    print(
        f"concurrency {args.concurrency}, store latency {args.latency_ms} ms/page, "
        f"fetcher and syncer at WOOSYNC_BATCH_NICE={args.batch_nice}"
    )
    for r in results:
        d = r.durations_s
        ratio = d[-1] / d[0] if d[0] > 0 else float("inf")
        print(
            f"{r.label:<22} durations s: fastest {d[0]:.1f}, median {statistics.median(d):.1f}, "
            f"slowest {d[-1]:.1f}   slowest/fastest {ratio:.2f} (target < {RATIO_TARGET:g})   "
            f"exact: {'all' if r.exact else 'NO'}"
        )
        print(
            f"{'':<22} of which reading the store: fastest {r.read_s[0]:.1f}, "
            f"median {statistics.median(r.read_s):.1f}, slowest {r.read_s[-1]:.1f} "
            "(the rest: waiting for the syncer and the tracker)"
        )
        print(f"{'':<22} the api created the {len(d)} jobs over {r.created_over_s:.1f} s")
        if r.huge_s is not None:
            print(
                f"{'':<22} the huge store's job ({args.huge:,} customers): {r.huge_s:.1f} s; "
                f"{r.huge_backlog:,} of its customers waited for the syncer as the others started"
            )
        for failure in r.failures[:10]:
            print(f"  {failure}")
    if len(results) == 2:
        alone, crowded = results
        print(
            f"small jobs with the huge store / alone: median "
            f"{statistics.median(crowded.durations_s) / statistics.median(alone.durations_s):.2f}"
            f", slowest {crowded.durations_s[-1] / alone.durations_s[-1]:.2f} "
            "(target: about 1, the huge store does not starve them)"
        )
    print("durations (s), fastest first:")
    for r in results:
        print(f"  {r.label}: " + " ".join(f"{d:.1f}" for d in r.durations_s))
    sys.stdout.flush()


async def run_fleets(args: argparse.Namespace) -> None:
    results = []
    with spawn_simulator(customers=args.per_org, seed=2, latency_ms=args.latency_ms) as small:
        results.append(await run_fleet(args, small, None))
        if args.huge:
            with spawn_simulator(
                customers=args.huge, seed=3, latency_ms=args.latency_ms, bulk=True
            ) as huge:
                results.append(await run_fleet(args, small, huge))
    report_fleet(results, args)


# --- both ---------------------------------------------------------------------------------------


def environment(args: argparse.Namespace, *, orgs: int) -> dict[str, str]:
    env = {
        "WOOSYNC_MAX_CONCURRENT_STORE_CHECKS": str(max(16, orgs)),
        "WOOSYNC_CRAWL_SLICE_S": f"{args.crawl_slice_s:g}",
    }
    if args.prefetch:
        env["WOOSYNC_PREFETCH"] = str(args.prefetch)
    env["WOOSYNC_BATCH_NICE"] = str(args.batch_nice)
    return env


async def main(args: argparse.Namespace) -> None:
    if args.orgs:
        await run_fleets(args)
    else:
        report_big(await run_big(args), args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="one store this big")
    parser.add_argument("--orgs", type=int, default=0, help="instead: this many orgs at once")
    parser.add_argument("--per-org", type=int, default=1_000, help="customers of each org")
    parser.add_argument("--huge", type=int, default=0, help="plus one store this big, first")
    parser.add_argument(
        "--huge-lead",
        type=float,
        default=0.25,
        help="the small jobs start once the huge one has recorded this share of its customers",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="each job's page workers")
    parser.add_argument("--latency-ms", type=int, default=20, help="store time per page")
    parser.add_argument(
        "--crawl-slice-s", type=float, default=300.0, help="WOOSYNC_CRAWL_SLICE_S of the run"
    )
    parser.add_argument("--prefetch", type=int, default=0, help="WOOSYNC_PREFETCH (0: default)")
    parser.add_argument(
        "--batch-nice", type=int, default=10,
        help="WOOSYNC_BATCH_NICE of the services (docs/operations.md; 0: all at one priority)",
    )
    parser.add_argument("--timeout-s", type=float, default=6 * 3600.0)
    asyncio.run(main(parser.parse_args()))
