"""What the rate and ETA cost a job's status: the read behind every status request and SSE poll.

For each job size, a fresh database holds the job's lines (two thirds settled, of which the
last 1,000 within the rate window) next to another org's job twice its size. The *floor* is the
status read without the rate (the job's row by primary key, as before the rate existed); the
*measured* run is ``shared.jobs.get_status``, row and rate together. Since migration 0022 the
rate is a column the tracker's recompute writes (``services.tracker.rates``), so one recompute
runs first, as a tracker that has just started would (it counts the window from the lines once),
and the status is one primary-key read whatever the job's size: the ratio stays near 1.
Both run as ``woosync_app`` in a transaction that names the org, each the median of repeated
runs. Run: ``python -m bench.status_rate [--sizes 10000 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from uuid import UUID, uuid4

import asyncpg

from bench.stack import drop, fresh_stack
from services.tracker.handlers import recompute
from shared import db
from shared.jobs import get_status

# The status row alone: what the status read was before it carried a rate.
FLOOR = """
SELECT id, org_id, connection_id, state, total, done_count, failed_count, store_total,
       pages_total, process_count, fetch_done_at, created_at, started_at, finished_at,
       updated_at, last_error
FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2
"""
REPEATS = 50
RECENT = 1_000


async def _seed(pool: asyncpg.Pool, org_id: UUID, lines: int) -> UUID:
    connection_id, job_id = uuid4(), uuid4()
    await pool.execute("INSERT INTO orgs (id, name) VALUES ($1, 'bench')", org_id)
    await pool.execute(
        """INSERT INTO woo_connections (id, org_id, store_url, auth_mode, consumer_key,
                                        consumer_secret_enc)
           VALUES ($1, $2, 'https://bench.example', 'oauth1', 'ck', '\\x00'::bytea)""",
        connection_id,
        org_id,
    )
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue (id, org_id, connection_id, state, batch_size,
                                                concurrency, store_total, started_at)
           VALUES ($1, $2, $3, 'processing', 100, 4, $4, now() - interval '1 hour')""",
        job_id,
        org_id,
        connection_id,
        lines,
    )
    # Settled an hour ago, but for the last RECENT; a third still pending.
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, state, updated_at)
           SELECT $1, w, $2, CASE WHEN w % 3 = 0 THEN 'pending' ELSE 'done' END,
                  CASE WHEN w > $3 - $4 THEN now() ELSE now() - interval '1 hour' END
           FROM generate_series(1, $3) AS w""",
        job_id,
        org_id,
        lines,
        RECENT,
    )
    return job_id


async def _median_ms(run: Callable[[], Awaitable[object]]) -> float:
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        await run()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def measure(lines: int) -> tuple[float, float, float | None]:
    stack = await fresh_stack("rate")
    owner = await db.create_pool(stack.dsn, min_size=1, max_size=1)
    app = await db.create_pool(stack.env["WOOSYNC_DATABASE_URL"], min_size=1, max_size=1)
    try:
        org_id = uuid4()
        job_id = await _seed(owner, org_id, lines)
        await _seed(owner, uuid4(), 2 * lines)
        await owner.execute("VACUUM ANALYZE woo_customer_sync_queue_line")
        scope = db.for_org(app, org_id)
        await recompute(scope, job_id)  # the tracker writes the rate and the conflicts
        async with scope.transaction() as conn:
            floor = await _median_ms(lambda: conn.fetchrow(FLOOR, job_id, org_id))
            measured = await _median_ms(lambda: get_status(conn, org_id=org_id, job_id=job_id))
            status = await get_status(conn, org_id=org_id, job_id=job_id)
        return floor, measured, status.rate_per_s if status else None
    finally:
        await owner.close()
        await app.close()
        await drop(stack)


async def main(sizes: list[int]) -> int:
    print(f"{'lines':>9}  {'row ms (floor)':>14}  {'status ms':>14}  {'ratio':>5}  rate/s")
    for lines in sizes:
        floor_ms, status_ms, rate = await measure(lines)
        print(
            f"{lines:>9,}  {floor_ms:>14.2f}  {status_ms:>14.2f}  {status_ms / floor_ms:>5.2f}"
            f"  {rate}"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.sizes)))
