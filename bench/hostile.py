"""Hostile stores against the real processes, each figure next to a floor measured in the same run.

One fresh stack (api, fetcher, syncer, tracker as processes, run by the ``woosync up``
supervisor) and simulated stores (``tools.woosim`` processes) in their hostile modes:

1. **A store claiming 10^9 customers** (``claimed_total``) while holding a few thousand: the
   fetcher's peak RSS from the start of that sync until its job has failed (and another org's
   honest sync started beside it is done), against the same fetcher's RSS after an honest sync of
   a small store (the floor; its RSS idle after start is printed too). Also the time for the
   lying job to fail, and the other org's honest sync time beside it against its time alone.
2. **A store that trickles every response** (``rate_trickle`` 1, a byte every ``trickle_ms``,
   each read well within the read timeout): time from the start request to the job failed,
   against the configured budget ``WOOSYNC_STORE_REQUEST_DEADLINE_S`` x
   ``WOOSYNC_STORE_MAX_ATTEMPTS`` (the api's connection test is let through once, so the
   fetcher meets the trickle). Then ``start`` against it: time to the 422, against
   ``WOOSYNC_STORE_CHECK_DEADLINE_S``.
3. **force-done on a crawl of a slow store** (``latency_ms`` per page): time from the
   force-done answer to the store's last request (``/__sim/stats`` ``last_received_at``),
   against one page's latency, and the number of requests that arrived after the answer.

Timings are wall clock on a shared machine: read the ratios, not the seconds. Nothing here is
asserted; the exit status is 1 only if a job ends otherwise than the hostile case requires.
Run: ``python -m bench.hostile [--customers 2000] [--claimed-total 1000000000] ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import aio_pika
import asyncpg
import httpx
import psutil

from bench.stack import AMQP, BenchStack, drop, fresh_stack
from shared import db
from shared.auth import create_org
from shared.topology import Topology
from tools.woosim.testing import SimHandle, spawn_simulator
from woosync.progress import wait_ready
from woosync.supervisor import SERVICES, Supervisor

ROUTE = "/api/v1/integrations/woocommerce/sync/customers"
MIB = 2**20


@dataclass(frozen=True)
class Options:
    customers: int
    claimed_total: int
    trickle_ms: int
    request_deadline_s: float
    check_deadline_s: float
    attempts: int
    read_timeout_s: float
    backoff_max_s: float
    latency_ms: int
    force_after_pages: int
    watch_s: float
    concurrency: int
    repeats: int

    def env(self) -> dict[str, str]:
        return {
            "WOOSYNC_STORE_TIMEOUT_S": str(self.read_timeout_s),
            "WOOSYNC_STORE_REQUEST_DEADLINE_S": str(self.request_deadline_s),
            "WOOSYNC_STORE_CHECK_DEADLINE_S": str(self.check_deadline_s),
            "WOOSYNC_STORE_MAX_ATTEMPTS": str(self.attempts),
            "WOOSYNC_STORE_BACKOFF_MAX_S": str(self.backoff_max_s),
        }


@dataclass
class Figures:
    rss_idle_mib: float = 0.0
    rss_floor_mib: float = 0.0
    rss_peak_mib: float = 0.0
    liar_failed_s: float = 0.0
    liar_error: str = ""
    liar_requests: int = 0
    alone_s: float = 0.0
    beside_liar_s: float = 0.0
    trickle_failed_s: float = 0.0
    trickle_error: str = ""
    trickled: int = 0
    check_status: int = 0
    check_s: float = 0.0
    force_pages: int = 0
    force_during: int = 0
    force_after: int = 0
    force_last_ms: float = 0.0
    force_call_ms: float = 0.0
    force_status: int = 0
    problems: list[str] = field(default_factory=list)


class Bench:
    """The running stack and what talking to it needs."""

    def __init__(self, stack: BenchStack, supervisor: Supervisor, pool: asyncpg.Pool) -> None:
        self.stack, self.supervisor, self.pool = stack, supervisor, pool
        self.api = f"http://127.0.0.1:{stack.env['WOOSYNC_API_PORT']}"

    async def org(self, name: str) -> dict[str, str]:
        org_id, key = await create_org(self.pool, name)
        return {"org_id": str(org_id), "Authorization": f"Bearer {key}"}

    async def post(self, org: dict[str, str], body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(timeout=120) as client:
            return await client.post(
                self.api + ROUTE, json={**body, "org_id": org["org_id"]},
                headers={"Authorization": org["Authorization"]},
            )  # fmt: skip

    async def start(
        self, org: dict[str, str], sim: SimHandle, *, concurrency: int, batch_size: int = 100
    ) -> httpx.Response:
        return await self.post(org, {
            "action": "start",
            "config": {"url": sim.url, "consumer_key": sim.consumer_key,
                       "consumer_secret": sim.consumer_secret, "auth": "oauth1"},
            "options": {"batch_size": batch_size, "concurrency": concurrency},
        })  # fmt: skip

    async def started(self, org: dict[str, str], sim: SimHandle, **options: Any) -> str:
        response = await self.start(org, sim, **options)
        if response.status_code != 202:
            raise RuntimeError(f"start answered {response.status_code}: {response.text[:500]}")
        return str(response.json()["job_id"])

    async def final(self, job_id: str, timeout_s: float = 600.0) -> asyncpg.Record:
        """The job's row once done or failed (polled every 50 ms through the schema owner)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            row = await self.pool.fetchrow(
                "SELECT state, last_error FROM woo_customer_sync_queue WHERE id = $1::uuid",
                job_id,
            )
            if row["state"] in ("done", "failed"):
                return row
            await asyncio.sleep(0.05)
        raise TimeoutError(f"job {job_id} not final after {timeout_s:.0f}s")

    async def pages(self, job_id: str) -> int:
        count = await self.pool.fetchval(
            "SELECT count(*) FROM woo_customer_sync_page WHERE job_id = $1::uuid", job_id
        )
        return int(count)

    def fetcher_rss(self) -> int:
        return int(psutil.Process(self.supervisor.pids()["fetcher"]).memory_info().rss)

    async def timed_sync(self, org: dict[str, str], sim: SimHandle, concurrency: int) -> float:
        started = time.perf_counter()
        row = await self.final(await self.started(org, sim, concurrency=concurrency))
        if row["state"] != "done":
            raise RuntimeError(f"an honest sync ended {row['state']}: {row['last_error']}")
        return time.perf_counter() - started


@contextlib.asynccontextmanager
async def peak_rss(bench: Bench) -> AsyncIterator[list[int]]:
    """Samples the fetcher's resident memory every 20 ms; yields [peak bytes]."""
    process = psutil.Process(bench.supervisor.pids()["fetcher"])
    peak = [process.memory_info().rss]

    async def sample() -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], process.memory_info().rss)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_consumers(namespace: str) -> None:
    """Until the fetcher and the syncer consume their queues (they have finished starting)."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(AMQP)
    async with connection:
        channel = await connection.channel()
        for name in (topology.fetcher_queue.name, topology.syncer_queue.name):
            for _ in range(600):
                queue = await channel.declare_queue(name, passive=True)
                if queue.declaration_result.consumer_count:
                    break
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError(f"no consumer on {name} after 60s")


async def claimed_billion(bench: Bench, o: Options, f: Figures) -> None:
    """Fetcher memory while a store claims ``claimed_total`` customers; another org beside it."""
    f.rss_idle_mib = bench.fetcher_rss() / MIB
    with (
        spawn_simulator(customers=o.customers, seed=11) as honest,
        spawn_simulator(customers=o.customers, seed=12,
                        faults={"claimed_total": o.claimed_total}) as liar,
    ):  # fmt: skip
        await bench.timed_sync(await bench.org("warm-up"), honest, o.concurrency)
        await asyncio.sleep(1.0)  # let the warm-up's batches settle before reading the floor
        f.rss_floor_mib = bench.fetcher_rss() / MIB
        alone, beside_liar, failed_after = [], [], []
        for n in range(o.repeats):
            alone.append(await bench.timed_sync(await bench.org(f"alone{n}"), honest,
                                                o.concurrency))  # fmt: skip
        for n in range(o.repeats):
            liar_org, other_org = await bench.org(f"liar{n}"), await bench.org(f"beside{n}")
            await liar.reset_stats()
            async with peak_rss(bench) as peak:
                started = time.perf_counter()
                lying = await bench.started(liar_org, liar, concurrency=o.concurrency)
                beside = asyncio.create_task(bench.timed_sync(other_org, honest, o.concurrency))
                row = await bench.final(lying)
                failed_after.append(time.perf_counter() - started)
                beside_liar.append(await beside)
            f.rss_peak_mib = max(f.rss_peak_mib, peak[0] / MIB)
            f.liar_requests = (await liar.stats())["received"]
            if row["state"] != "failed":
                f.problems.append(f"the lying store's job ended {row['state']}, not failed")
    f.alone_s = statistics.median(alone)
    f.beside_liar_s = statistics.median(beside_liar)
    f.liar_failed_s = statistics.median(failed_after)
    f.liar_error = row["last_error"] or ""


async def trickling(bench: Bench, o: Options, f: Figures) -> None:
    """A store trickling every response: its crawl cut off, then its connection test."""
    # The api's connection test (one request) is let through, so the crawl itself meets the
    # trickle; once that script is used up, every response trickles.
    faults = {"rate_trickle": 1.0, "trickle_ms": o.trickle_ms, "script": ["ok"]}
    with spawn_simulator(customers=o.customers, seed=13, faults=faults) as sim:
        started = time.perf_counter()
        job_id = await bench.started(await bench.org("trickled"), sim, concurrency=o.concurrency)
        row = await bench.final(job_id)
        f.trickle_failed_s = time.perf_counter() - started
        f.trickle_error = row["last_error"] or ""
        if row["state"] != "failed":
            f.problems.append(f"the trickling store's job ended {row['state']}, not failed")

        started = time.perf_counter()
        response = await bench.start(await bench.org("checked"), sim, concurrency=o.concurrency)
        f.check_s = time.perf_counter() - started
        f.check_status = response.status_code
        f.trickled = (await sim.stats())["by_fault"].get("trickle", 0)
    if f.check_status != 422:
        f.problems.append(f"start against a trickling store answered {f.check_status}, not 422")


async def force_done(bench: Bench, o: Options, f: Figures) -> None:
    """force-done on a crawl of a slow store: how long the store still hears from us."""
    customers = max(o.customers, 20 * (o.force_after_pages + 20))  # a crawl that outlasts it
    with spawn_simulator(customers=customers, seed=14, latency_ms=o.latency_ms) as sim:
        org = await bench.org("forced")
        job_id = await bench.started(org, sim, concurrency=o.concurrency, batch_size=20)
        deadline = time.monotonic() + 120
        while (pages := await bench.pages(job_id)) < o.force_after_pages:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{o.force_after_pages} pages not read within 120s")
            await asyncio.sleep(0.05)
        f.force_pages = pages
        before = (await sim.stats())["received"]
        called_at = time.time()
        response = await bench.post(
            org, {"action": "force-done", "job_id": job_id, "reason": "bench.hostile"}
        )
        answered_at = time.time()
        f.force_call_ms = (answered_at - called_at) * 1000
        f.force_status = response.status_code
        at_answer = (await sim.stats())["received"]
        if response.status_code != 200:
            f.problems.append(f"force-done answered {response.status_code}: {response.text}")
        await asyncio.sleep(o.watch_s)
        stats = await sim.stats()
    f.force_during = at_answer - before
    f.force_after = stats["received"] - at_answer
    f.force_last_ms = (stats["last_received_at"] - answered_at) * 1000


def ratio(value: float, floor: float) -> str:
    return f"{value / floor:.2f}" if floor > 0 else "n/a"


def report(o: Options, f: Figures) -> None:
    budget_s = o.request_deadline_s * o.attempts
    last_ms = max(f.force_last_ms, 0.0)
    print(
        f"hostile stores: honest stores of {o.customers:,} customers, concurrency "
        f"{o.concurrency}; store read timeout {o.read_timeout_s:g}s, request deadline "
        f"{o.request_deadline_s:g}s x {o.attempts} attempts (backoff <= {o.backoff_max_s:g}s), "
        f"check deadline {o.check_deadline_s:g}s",
        f"1. a store claiming {o.claimed_total:,} customers (holding {o.customers:,})",
        f"   fetcher RSS idle after start           {f.rss_idle_mib:8.1f} MiB",
        f"   fetcher RSS after an honest sync       {f.rss_floor_mib:8.1f} MiB  (floor)",
        f"   fetcher peak RSS, liar until failed    {f.rss_peak_mib:8.1f} MiB  "
        f"ratio {ratio(f.rss_peak_mib, f.rss_floor_mib)}  "
        f"(+{f.rss_peak_mib - f.rss_floor_mib:.1f} MiB)",
        f"   liar's job failed after                {f.liar_failed_s:8.2f} s    "
        f"(median of {o.repeats}; {f.liar_requests} store requests incl. the api's check)",
        f"   error: {f.liar_error[:200]}",
        f"   other org's honest sync alone          {f.alone_s:8.2f} s    (floor, median)",
        f"   other org's honest sync beside liar    {f.beside_liar_s:8.2f} s    ratio "
        f"{ratio(f.beside_liar_s, f.alone_s)}  (median)",
        f"2. a store trickling every response (a byte every {o.trickle_ms} ms)",
        f"   start to job failed                    {f.trickle_failed_s:8.2f} s    floor "
        f"{budget_s:g} s (request deadline x attempts)  ratio "
        f"{ratio(f.trickle_failed_s, budget_s)}",
        f"   error: {f.trickle_error[:200]}",
        f"   start against it: {f.check_status} after            {f.check_s:8.2f} s    floor "
        f"{o.check_deadline_s:g} s (check deadline)  ratio {ratio(f.check_s, o.check_deadline_s)}"
        f"  ({f.trickled} trickled responses in all)",
        f"3. force-done on a crawl of a slow store ({o.latency_ms} ms per page, 20 per page, "
        f"after {f.force_pages} pages)",
        f"   force-done answered {f.force_status} after          {f.force_call_ms:8.0f} ms",
        f"   store requests during the call {f.force_during}, after its answer "
        f"{f.force_after} (watched {o.watch_s:g} s)",
        f"   last store request after the answer    {f.force_last_ms:+8.0f} ms   floor "
        f"{o.latency_ms} ms (one page)  ratio {ratio(last_ms, o.latency_ms)}"
        + ("  (none after the answer)" if f.force_last_ms <= 0 else ""),
        sep="\n",
    )
    for problem in f.problems:
        print(f"PROBLEM: {problem}")
    sys.stdout.flush()


async def main(o: Options) -> int:
    fresh = await fresh_stack("hostile")
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for reading afterwards
        "w", prefix="woosync-hostile-", suffix=".log", delete=False
    )
    figures = Figures()
    with log_file as logs:
        print(f"service logs: {logs.name}", flush=True)
        await run(fresh, o, figures, logs)
    report(o, figures)
    return 1 if figures.problems else 0


async def run(fresh: BenchStack, o: Options, f: Figures, logs: TextIO) -> None:
    supervisor = Supervisor(SERVICES, env={**fresh.env, **o.env()}, colour=False, out=logs)
    stack = asyncio.create_task(supervisor.run())
    pool: asyncpg.Pool | None = None
    try:
        env = fresh.env
        await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}/readyz")
        await wait_ready(f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}/readyz")
        await wait_consumers(fresh.namespace)
        pool = await db.create_pool(fresh.dsn, min_size=1, max_size=2)
        bench = Bench(fresh, supervisor, pool)
        await claimed_billion(bench, o, f)
        await trickling(bench, o, f)
        await force_done(bench, o, f)
    finally:
        if pool is not None:
            await pool.close()
        supervisor.stop()
        await stack
        await drop(fresh)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--customers", type=int, default=2_000, help="customers of each simulated store")
    add("--claimed-total", type=int, default=10**9, help="X-WP-Total of the lying store")
    add("--trickle-ms", type=int, default=300, help="one byte every this many ms")
    add("--request-deadline-s", type=float, default=2.0, help="WOOSYNC_STORE_REQUEST_DEADLINE_S")
    add("--check-deadline-s", type=float, default=3.0, help="WOOSYNC_STORE_CHECK_DEADLINE_S")
    add("--attempts", type=int, default=3, help="WOOSYNC_STORE_MAX_ATTEMPTS")
    add("--read-timeout-s", type=float, default=1.0, help="WOOSYNC_STORE_TIMEOUT_S")
    add("--backoff-max-s", type=float, default=0.2, help="WOOSYNC_STORE_BACKOFF_MAX_S")
    add("--latency-ms", type=int, default=300, help="the slow store's time per page")
    add("--force-after-pages", type=int, default=6, help="pages read before force-done")
    add("--watch-s", type=float, default=3.0, help="how long the store is watched afterwards")
    add("--concurrency", type=int, default=4)
    add("--repeats", type=int, default=3, help="runs of case 1 (medians; the peak of peaks)")
    args = parser.parse_args(argv)
    if args.trickle_ms / 1000 >= args.read_timeout_s:
        parser.error("--trickle-ms must stay below --read-timeout-s, or it is no trickle")
    return Options(**{k.replace("-", "_"): v for k, v in vars(args).items()})


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
