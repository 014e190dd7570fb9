"""What row-level security costs the database's hottest read: the tracker's count of a job's lines.

For each job size, a fresh database holds the job's lines next to another org's job twice its
size. The *floor* is the tracker's count (``services.tracker.queries``) run by the schema owner,
whom the policies do not bind; the *measured* run is the same count by ``woosync_app`` in a
transaction that names the org, exactly as the tracker runs it. Each is the median of repeated
runs. Run: ``python -m bench.rls_overhead [--sizes 10000 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from uuid import uuid4

import asyncpg

from bench.stack import drop, fresh_stack
from services.tracker import queries as q
from shared import db

COUNT = "WITH " + q._LINE_COUNTS + " SELECT * FROM counts"
REPEATS = 15


async def _seed(pool: asyncpg.Pool, org_id: object, lines: int) -> object:
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
                                                concurrency)
           VALUES ($1, $2, $3, 'processing', 100, 4)""",
        job_id,
        org_id,
        connection_id,
    )
    await pool.execute(
        """INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, state)
           SELECT $1, w, $2, CASE WHEN w % 3 = 0 THEN 'pending' ELSE 'done' END
           FROM generate_series(1, $3) AS w""",
        job_id,
        org_id,
        lines,
    )
    return job_id


async def _median_ms(pool: asyncpg.Pool, org_id: object, job_id: object) -> float:
    timings = []
    async with db.for_org(pool, org_id).transaction() as conn:
        for _ in range(REPEATS):
            started = time.perf_counter()
            await conn.fetchrow(COUNT, job_id, org_id)
            timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def measure(lines: int) -> tuple[float, float]:
    stack = await fresh_stack("rls")
    owner = await db.create_pool(stack.dsn, min_size=1, max_size=1)
    app = await db.create_pool(stack.env["WOOSYNC_DATABASE_URL"], min_size=1, max_size=1)
    try:
        org_id, other_org = uuid4(), uuid4()
        job_id = await _seed(owner, org_id, lines)
        await _seed(owner, other_org, 2 * lines)
        await owner.execute("VACUUM ANALYZE woo_customer_sync_queue_line")
        return await _median_ms(owner, org_id, job_id), await _median_ms(app, org_id, job_id)
    finally:
        await owner.close()
        await app.close()
        await drop(stack)


async def main(sizes: list[int]) -> int:
    print(f"{'lines':>9}  {'owner ms (floor)':>16}  {'woosync_app ms':>14}  {'ratio':>5}")
    for lines in sizes:
        floor_ms, app_ms = await measure(lines)
        print(f"{lines:>9,}  {floor_ms:>16.1f}  {app_ms:>14.1f}  {app_ms / floor_ms:>5.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.sizes)))
