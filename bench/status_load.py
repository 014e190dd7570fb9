"""Status and progress under load: status latency at a fixed request rate, progress-stream delay
with many followers, and the database work of 1 against F followers, during a real sync.

The four services run as processes on a fresh database and broker namespace (``bench.stack``)
and sync a simulated store of ``--customers`` (default 100,000, no simulated latency). In order:

* **floor**: before the sync, status GETs (``JOB_PATH``, API key) of an idle job, open-loop at
  ``--rate`` per second for ``--seconds``: sends are scheduled at fixed times whatever the
  answers do, and each latency runs from the scheduled time (so a slow answer is not hidden by a
  send that waited for it). Sends that left more than 10 ms late and failed requests are counted.
* **status under load**: as soon as the sync started, the same open-loop GETs of the running
  job, and meanwhile a tenth as many of the idle job (the floor under the same machine load);
  p50/p95/p99 beside the floors and the 20 ms target, with each service's CPU time.
* **1 follower**: one progress stream of the job is opened, and the database's counters are read
  over ``--window`` seconds (below).
* **F followers**: ``--followers`` streams of the job are opened (in a process of their own, so
  their parsing does not slow this one's clock), the one is closed, and the counters are read
  again over ``--window`` seconds; the streams then follow the job to its end.
* **delay**: each follower records when it received each event. The delay of an event is its
  receive time less the job row's ``updated_at`` it carries: the start of the tracker's
  transaction that wrote that change (counts, conflicts, state). An event whose ``updated_at``
  is the one its stream already showed (a rate-only change, which does not touch
  ``updated_at``) is not counted, nor each stream's first event. So the delay covers the
  recompute's own transaction, the wait for the job's shared poller (``progress_interval_s``) and
  the delivery to the client; not the time from a line settling to the tracker's recompute.

Database work is read from PostgreSQL's statistics of the bench database: transactions committed
(every service), primary-key reads of job rows (``woo_customer_sync_queue_pkey`` scans: the
progress pollers', the tracker's recomputes', the fetcher's and syncer's), API-key reads
(``api_keys`` scans: the streams' credential rechecks) and lease renewals (rows updated in
``woosync_stream_lease``), per second. With the followers sharing one poller per job and their
rechecks, the F column should match the 1 column within the noise of the running sync.

The fetcher and the syncer run at ``--batch-nice`` (10, as docs/operations.md recommends when the
services share a machine; 0 puts every process at one priority): batch work yields the CPU to
the api's answers and the tracker's streams.

Run: ``python -m bench.status_load [--customers 100000] [--followers 500] [--rate 200]``;
while developing on a busy machine: ``--customers 5000 --followers 50 --latency-ms 300
--concurrency 1`` (a slower store keeps a small job running through every phase).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import psutil
from httpx_sse import aconnect_sse

from bench.stack import drop, fresh_stack, start_body
from shared import db
from shared.auth import create_org
from shared.paths import JOB_PATH, PROGRESS_PATH, SYNC_PATH
from tests.factories import make_job
from tools.woosim.testing import spawn_simulator
from woosync.progress import wait_ready
from woosync.supervisor import SERVICES, Supervisor

TARGET_STATUS_P99_MS = 20.0
TARGET_DELAY_P95_MS = 500.0
LATE_S = 0.010
# PostgreSQL (15+) flushes an idle backend's statistics within 10 s: a window starts after that,
# so it counts neither the streams' connecting nor the work of an earlier phase.
SETTLE_S = 11.0
RAW_CONNECTIONS = 64  # keep-alive connections of the status GETs
KEY_ENV = "WOOSYNC_BENCH_KEY"  # the followers' process gets the API key here, not in argv

COUNTERS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
           AS transactions,
       (SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes
        WHERE indexrelname = 'woo_customer_sync_queue_pkey') AS job_reads,
       (SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables
        WHERE relname = 'api_keys') AS key_reads,
       (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'woosync_stream_lease')
           AS lease_rows_renewed
"""


class RawHttp:
    """A minimal HTTP/1.1 client over keep-alive connections: the load generator must cost far
    less than the server it measures (httpx spends several ms of CPU a request, which on two
    shared cores starves the services it times)."""

    def __init__(self, base: str, connections: int) -> None:
        host_port = base.removeprefix("http://")
        self._host, port = host_port.split(":")
        self._port = int(port)
        self._free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._size = connections
        self._opened = 0

    async def _connection(
        self, *, fresh: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if fresh or (self._free.empty() and self._opened < self._size):
            self._opened += 1
            return await asyncio.open_connection(self._host, self._port)
        return await self._free.get()

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            return await self._get(path, headers)
        except asyncio.IncompleteReadError as closed:
            if closed.partial:
                raise
        # The server closed a kept-alive connection that sat idle past its keep-alive timeout
        # (uvicorn's 5 s, between phases) before this request reached it: as any HTTP client
        # does, send it again on a new connection. The latency still counts from the schedule.
        return await self._get(path, headers, fresh=True)

    async def _get(
        self, path: str, headers: dict[str, str], *, fresh: bool = False
    ) -> tuple[int, bytes]:
        reader, writer = await self._connection(fresh=fresh)
        try:
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n{lines}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._opened -= 1
            raise
        self._free.put_nowait((reader, writer))
        return status, body

    async def close(self) -> None:
        while not self._free.empty():
            _, writer = self._free.get_nowait()
            writer.close()


@dataclass
class Load:
    """An open-loop run of status GETs."""

    latencies_ms: list[float] = field(default_factory=list)
    late: int = 0
    failed: int = 0
    running: int = 0  # answers that showed the job not final

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(p / 100 * len(ordered)), len(ordered) - 1)] if ordered else 0.0


async def open_loop(client: RawHttp, path: str, key: str, *, rate: float, seconds: float) -> Load:
    """``rate * seconds`` GETs sent at fixed times; latency from each one's scheduled time."""
    loop = asyncio.get_running_loop()
    load = Load()
    start = loop.time() + 0.2
    headers = {"Authorization": f"Bearer {key}"}

    async def one(n: int) -> None:
        scheduled = start + n / rate
        await asyncio.sleep(max(scheduled - loop.time(), 0))
        if loop.time() - scheduled > LATE_S:
            load.late += 1
        try:
            status, body = await client.get(path, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            load.failed += 1
            return
        if status != 200:
            load.failed += 1
            return
        load.latencies_ms.append((loop.time() - scheduled) * 1000)
        if json.loads(body)["state"] not in ("done", "failed"):
            load.running += 1

    await asyncio.gather(*(one(n) for n in range(int(rate * seconds))))
    return load


class CpuMeter:
    """CPU seconds of each service (and of the whole machine) over a phase: what the status
    requests cost the api, and how busy the cores were while they were timed."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    def _read(self) -> dict[str, float]:
        times = {name: sum(p.cpu_times()[:2]) for name, p in self._processes.items()}
        times["machine"] = sum(psutil.cpu_times()[:3])  # user, nice, system
        times["bench"] = sum(psutil.Process().cpu_times()[:2])
        times["wall"] = time.monotonic()
        return times

    async def around(self, phase: Awaitable[Load], requests: int) -> tuple[Load, dict[str, float]]:
        before = self._read()
        load = await phase
        after = self._read()
        wall = after["wall"] - before["wall"]
        used = {f"{name}_s": after[name] - before[name] for name in self._processes}
        used["bench_s"] = after["bench"] - before["bench"]
        used["api_ms_per_request"] = 1000 * used.get("api_s", 0) / max(requests, 1)
        used["machine_busy"] = (after["machine"] - before["machine"]) / wall / psutil.cpu_count()
        return load, used


async def counters(owner: asyncpg.Pool) -> dict[str, float]:
    row = await owner.fetchrow(COUNTERS)
    return {name: float(row[name] or 0) for name in row.keys()}  # noqa: SIM118


async def per_second(owner: asyncpg.Pool, seconds: float, settle_s: float) -> dict[str, float]:
    """The counters' growth per second over ``seconds``, after ``settle_s``."""
    await asyncio.sleep(settle_s)
    before, started = await counters(owner), time.monotonic()
    await asyncio.sleep(seconds)
    after, took = await counters(owner), time.monotonic() - started
    return {name: (after[name] - before[name]) / took for name in after}


# --- the followers' process ---------------------------------------------------------------------


async def sse_events(url: str, key: str) -> AsyncIterator[tuple[str, float, dict[str, Any]]]:
    """One progress stream read over a bare socket: (event, received at, status) per event."""
    rest = url.removeprefix("http://")
    host_port, path = rest.split("/", 1)
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if int(head.split(b" ", 2)[1]) != 200:
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        chunked = b"transfer-encoding: chunked" in head.lower()
        buffer = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                buffer += (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
            *blocks, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
                if b"data" in fields:
                    event = fields.get(b"event", b"message").decode()
                    yield event, time.time(), json.loads(fields[b"data"])
    finally:
        writer.close()


async def followers_main(url: str, followers: int, out: str, give_up_s: float) -> None:
    """Open ``followers`` streams of ``url``; record every event; say "connected" once each has
    its first; write the records to ``out`` when every stream ended (or at ``give_up_s``)."""
    key = os.environ[KEY_ENV]
    records: list[list[Any]] = [[] for _ in range(followers)]
    connected = 0
    all_connected = asyncio.Event()

    async def follow(n: int) -> None:
        nonlocal connected
        async for event, received, status in sse_events(url, key):
            records[n].append([event, received, status.get("updated_at")])
            if len(records[n]) == 1:
                connected += 1
                if connected == followers:
                    all_connected.set()
            if event != "progress":
                return

    tasks = [asyncio.create_task(follow(n)) for n in range(followers)]
    everything = asyncio.gather(*tasks, return_exceptions=True)
    waiter = asyncio.create_task(all_connected.wait())
    await asyncio.wait([waiter, everything], return_when=asyncio.FIRST_COMPLETED, timeout=give_up_s)
    print("connected" if all_connected.is_set() else "not connected", flush=True)
    results = await asyncio.wait_for(everything, give_up_s)
    waiter.cancel()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    with open(out, "w") as f:
        json.dump({"records": records, "errors": errors[:5], "error_count": len(errors)}, f)


def delays_ms(records: list[list[list[Any]]]) -> list[float]:
    """Per stream, each event after the first that shows a newer job row: received - updated_at."""
    delays = []
    for events in records:
        shown = None
        for index, (_kind, received, updated_at) in enumerate(events):
            if updated_at is None:
                continue
            changed = datetime.fromisoformat(updated_at).timestamp()
            if index > 0 and updated_at != shown:
                delays.append((received - changed) * 1000)
            shown = updated_at
    return delays


# --- the bench ----------------------------------------------------------------------------------


@dataclass
class Results:
    floor: Load = field(default_factory=Load)
    loaded: Load = field(default_factory=Load)
    idle_meanwhile: Load = field(default_factory=Load)
    floor_cpu: dict[str, float] = field(default_factory=dict)
    running_after: dict[str, bool] = field(default_factory=dict)  # the job, after each phase
    loaded_cpu: dict[str, float] = field(default_factory=dict)
    one: dict[str, float] = field(default_factory=dict)
    many: dict[str, float] = field(default_factory=dict)
    delays_ms: list[float] = field(default_factory=list)
    stream_errors: int = 0
    final_state: str = ""
    sync_s: float = 0.0


async def run(args: argparse.Namespace) -> Results:
    results = Results()
    fresh = await fresh_stack("load")
    env = {
        **fresh.env,
        "WOOSYNC_MAX_SSE_STREAMS_PER_ORG": str(args.followers + 10),
        "WOOSYNC_RATE_LIMIT_PER_MINUTE": str(int(args.rate * 60 * 4)),
        "WOOSYNC_RATE_LIMIT_BURST": str(int(args.rate * 4)),
        "WOOSYNC_BATCH_NICE": str(args.batch_nice),
    }
    supervisor = Supervisor(SERVICES, env=env, colour=False, out=sys.stderr)
    stack = asyncio.create_task(supervisor.run())
    owner = await db.create_pool(fresh.dsn, min_size=1, max_size=2)
    try:
        api = f"http://127.0.0.1:{env['WOOSYNC_API_PORT']}"
        tracker = f"http://127.0.0.1:{env['WOOSYNC_TRACKER_PORT']}"
        await wait_ready(api + "/readyz")
        await wait_ready(tracker + "/readyz")
        org_id, key = await create_org(owner, "bench")
        idle = await make_job(owner, org_id, state="done", store_total=10, fetch_done=True)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            print(f"floor: {args.rate:g} status GETs/s of an idle job for {args.seconds:g} s")
            meter = CpuMeter(supervisor.pids())
            raw = RawHttp(api, RAW_CONNECTIONS)
            # A fresh api prepares its statements and fills its pool: not part of any figure.
            await open_loop(raw, JOB_PATH.format(job_id=idle), key, rate=args.rate, seconds=1.0)
            results.floor, results.floor_cpu = await meter.around(
                open_loop(
                    raw,
                    JOB_PATH.format(job_id=idle),
                    key,
                    rate=args.rate,
                    seconds=args.seconds,
                ),
                int(args.rate * args.seconds),
            )
            with spawn_simulator(
                customers=args.customers, seed=1, latency_ms=args.latency_ms
            ) as sim:
                job_id = await start(client, api, org_id, key, sim, args)
                started = time.monotonic()
                await measure_during(
                    client, raw, owner, meter, tracker, key, job_id, idle, args, results
                )
                results.final_state = await wait_final(owner, job_id, args.give_up_s)
                results.sync_s = time.monotonic() - started
                await raw.close()
    finally:
        await owner.close()
        supervisor.stop()
        await stack
        await drop(fresh)
    return results


async def start(
    client: httpx.AsyncClient,
    api: str,
    org_id: UUID,
    key: str,
    sim: Any,
    args: argparse.Namespace,
) -> UUID:
    body = start_body(org_id, sim, {"batch_size": 100, "concurrency": args.concurrency})
    answer = await client.post(
        api + SYNC_PATH, json=body, headers={"Authorization": f"Bearer {key}"}
    )
    answer.raise_for_status()
    return UUID(answer.json()["job_id"])


async def measure_during(
    client: httpx.AsyncClient,
    raw: RawHttp,
    owner: asyncpg.Pool,
    meter: CpuMeter,
    tracker: str,
    key: str,
    job_id: UUID,
    idle_id: UUID,
    args: argparse.Namespace,
    results: Results,
) -> None:
    stream_url = tracker + PROGRESS_PATH.format(job_id=job_id)
    headers = {"Authorization": f"Bearer {key}"}

    print(
        f"under load: {args.rate:g} status GETs/s of the running job, and {args.rate / 10:g} of "
        f"the idle one, for {args.seconds:g} s"
    )
    both = asyncio.gather(
        open_loop(
            raw,
            JOB_PATH.format(job_id=job_id),
            key,
            rate=args.rate,
            seconds=args.seconds,
        ),
        open_loop(
            raw,
            JOB_PATH.format(job_id=idle_id),
            key,
            rate=args.rate / 10,
            seconds=args.seconds,
        ),
    )

    async def phase() -> Load:
        results.loaded, results.idle_meanwhile = await both
        return results.loaded

    _, results.loaded_cpu = await meter.around(phase(), int(args.rate * 1.1 * args.seconds))
    results.running_after["status GETs"] = await running(owner, job_id)

    # One follower.
    first_event: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def one_follower() -> None:
        async with aconnect_sse(client, "GET", stream_url, headers=headers) as source:
            async for _event in source.aiter_sse():
                if not first_event.done():
                    first_event.set_result(None)

    single = asyncio.create_task(one_follower())
    await asyncio.wait_for(first_event, 30)
    print(f"1 follower: database counters over {args.window:g} s")
    results.one = await per_second(owner, args.window, args.settle_s)
    results.running_after["1 follower"] = await running(owner, job_id)
    single.cancel()
    await asyncio.gather(single, return_exceptions=True)

    # F followers, in a process of their own.
    out = f"/tmp/woosync-status-load-{job_id}.json"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.status_load",
        "--follow-worker",
        stream_url,
        "--followers",
        str(args.followers),
        "--out",
        out,
        "--give-up-s",
        str(args.give_up_s),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, KEY_ENV: key},
    )
    assert worker.stdout is not None
    line = (await asyncio.wait_for(worker.stdout.readline(), args.give_up_s)).decode().strip()
    print(f"{args.followers} followers: {line}; database counters over {args.window:g} s")
    results.many = await per_second(owner, args.window, args.settle_s)
    results.running_after[f"{args.followers} followers"] = await running(owner, job_id)

    await asyncio.wait_for(worker.wait(), args.give_up_s)
    with open(out) as f:
        recorded = json.load(f)
    os.unlink(out)
    results.delays_ms = delays_ms(recorded["records"])
    results.stream_errors = recorded["error_count"]
    for error in recorded["errors"]:
        print(f"  a stream failed: {error}")


async def running(owner: asyncpg.Pool, job_id: UUID) -> bool:
    state = await owner.fetchval("SELECT state FROM woo_customer_sync_queue WHERE id = $1", job_id)
    return state not in ("done", "failed")


async def wait_final(owner: asyncpg.Pool, job_id: UUID, give_up_s: float) -> str:
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        state = await owner.fetchval(
            "SELECT state FROM woo_customer_sync_queue WHERE id = $1", job_id
        )
        if state in ("done", "failed"):
            return str(state)
        await asyncio.sleep(0.5)
    return "still running"


def report(results: Results, args: argparse.Namespace) -> None:
    floor, loaded = results.floor, results.loaded
    print(
        f"\n== status under load: {args.customers:,} customers, {args.followers} followers, "
        f"{args.rate:g} GETs/s, job {results.final_state} after {results.sync_s:.0f} s; "
        f"fetcher and syncer at WOOSYNC_BATCH_NICE={args.batch_nice} =="
    )
    print(
        f"{'status GET ms':<28}{'p50':>8}{'p95':>8}{'p99':>8}{'target p99':>12}"
        f"{'sent':>7}{'late':>6}{'failed':>7}"
    )
    rows = (
        ("floor: idle job, before", floor),
        ("idle job, meanwhile", results.idle_meanwhile),
        ("running job", loaded),
    )
    for name, load in rows:
        sent = len(load.latencies_ms) + load.failed
        print(
            f"{name:<28}{load.percentile(50):>8.1f}{load.percentile(95):>8.1f}"
            f"{load.percentile(99):>8.1f}{TARGET_STATUS_P99_MS:>12.0f}{sent:>7}"
            f"{load.late:>6}{load.failed:>7}"
        )
    if floor.latencies_ms:
        meanwhile = results.idle_meanwhile.percentile(99) or 1.0
        print(
            f"  running job's p99 / floor's: {loaded.percentile(99) / floor.percentile(99):.2f}, "
            f"/ idle job's meanwhile: {loaded.percentile(99) / meanwhile:.2f}; answers showing "
            f"the job still running: {loaded.running} of {len(loaded.latencies_ms)}"
        )
        for name, cpu in (("floor", results.floor_cpu), ("under load", results.loaded_cpu)):
            print(
                f"  {name}: api CPU {cpu.get('api_ms_per_request', 0):.2f} ms a request; "
                f"machine busy {cpu.get('machine_busy', 0):.0%} of its cores; CPU s by "
                + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k.endswith("_s"))
            )
    ended = [phase for phase, still in results.running_after.items() if not still]
    if ended:
        print(f"  NOTE: the job had ended by the end of: {', '.join(ended)} (use more customers)")
    delays = results.delays_ms
    if delays:
        p95 = sorted(delays)[min(int(0.95 * len(delays)), len(delays) - 1)]
        print(
            f"\nprogress delay ms (change -> event), {len(delays)} events: "
            f"p50 {statistics.median(delays):.0f}, p95 {p95:.0f} (target {TARGET_DELAY_P95_MS:.0f})"
            f", max {max(delays):.0f}; floor: the poll interval, "
            f"{args.progress_interval_s * 1000:.0f} ms at most"
        )
    print(f"  streams that failed: {results.stream_errors}")
    print(
        f"\n{'database per second':<28}{'1 follower':>12}{f'{args.followers} followers':>15}"
        f"{'per added follower':>20}"
    )
    for name in ("transactions", "job_reads", "key_reads", "lease_rows_renewed"):
        one, many = results.one.get(name, 0), results.many.get(name, 0)
        added = (many - one) / max(args.followers - 1, 1)
        print(f"{name:<28}{one:>12.1f}{many:>15.1f}{added:>20.3f}")
    print("  (transactions: every service's, so they move with the sync; the three others are")
    print("   the progress streams' work: job-row reads, key rechecks, lease renewals)")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--followers", type=int, default=500)
    parser.add_argument("--rate", type=float, default=200.0, help="status GETs per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="of each GET run")
    parser.add_argument(
        "--window", type=float, default=12.0, help="of each counter reading (> the 5 s recheck)"
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="simulated store time per page")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--batch-nice", type=int, default=10,
        help="WOOSYNC_BATCH_NICE of the services (docs/operations.md; 0: all at one priority)",
    )
    parser.add_argument(
        "--settle-s", type=float, default=SETTLE_S, help="before each counter window"
    )
    parser.add_argument("--give-up-s", type=float, default=1800.0)
    parser.add_argument("--progress-interval-s", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("--follow-worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow_worker:
        asyncio.run(followers_main(args.follow_worker, args.followers, args.out, args.give_up_s))
        return
    report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
