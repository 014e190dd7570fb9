"""Dead-letter replay against the real RabbitMQ and PostgreSQL, with the real syncer and tracker.

Customers are parked by a cause that can be fixed: a CHECK constraint added to the test database
refuses ``first_name = 'POISON'``; dropping it is "fixing the cause". Then the parked batches are
replayed with the ``woosync dlq`` command (a real subprocess) and with the api's ``replay``
action, and replaying again must change nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import aio_pika
import asyncpg
import pytest

from services.tracker.app import build_app as build_tracker
from shared.auth import create_org
from shared.broker import make_broker, publish
from shared.messages import LinesDone
from shared.settings import Settings
from shared.topology import Topology
from tests.conftest import AMQP_URL
from tests.factories import Job, add_failed_lines, add_lines, make_sync_job
from tests.helpers import park_like_the_syncer, running_syncer, service_env
from tests.integration.test_api import serving

WAIT_S = 20.0
POISON = "POISON"
CONSTRAINT = "customer_not_poison"


# -- helpers ------------------------------------------------------------------------------------


async def seed_job(
    pool: asyncpg.Pool,
    woo_ids: list[int],
    *,
    org_id: UUID | None = None,
    state: str = "processing",
    failed: dict[int, dict[str, Any]] | None = None,
) -> Job:
    """A job whose every page is read (``fetch_done_at``), with a pending line per customer;
    ``failed`` lines are stored as the syncer leaves parked customers (with their payload)."""
    job = await make_sync_job(
        pool,
        org_id=org_id,
        consumer_secret_enc=b"\x00\xff",
        state=state,
        fetch_done=True,
        finished=state in ("done", "failed"),
    )
    failed = failed or {}
    pending = [w for w in woo_ids if w not in failed]
    await add_lines(pool, job.job_id, job.org_id, pending, page=1)
    payloads = {w: failed[w] for w in woo_ids if w in failed}
    await add_failed_lines(
        pool, job.job_id, job.org_id, payloads, page=1, attempts=4, last_error="refused"
    )
    return job


def customer(woo_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "id": woo_id,
        "email": f"customer{woo_id}@example.com",
        "first_name": f"First{woo_id}",
        "last_name": "Last",
        "username": f"user{woo_id}",
        "date_created_gmt": "2024-05-01T07:00:00",
        "date_modified_gmt": None,
        **overrides,
    }


async def add_poison_rule(pool: asyncpg.Pool) -> None:
    await pool.execute(
        f"ALTER TABLE customer ADD CONSTRAINT {CONSTRAINT} CHECK (first_name <> '{POISON}')"
    )


async def fix_the_cause(pool: asyncpg.Pool) -> None:
    await pool.execute(f"ALTER TABLE customer DROP CONSTRAINT {CONSTRAINT}")


@asynccontextmanager
async def running_tracker(settings: Settings) -> AsyncIterator[None]:
    """The tracker's whole lifespan (consumer and recompute loop), without serving HTTP."""
    app = build_tracker(settings)
    async with asyncio.timeout(WAIT_S):
        context = app.router.lifespan_context(app)
        await context.__aenter__()
    try:
        yield
    finally:
        async with asyncio.timeout(WAIT_S):
            await context.__aexit__(None, None, None)


@asynccontextmanager
async def channel() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


async def depth(name: str) -> int:
    async with channel() as ch:
        queue = await ch.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0


async def eventually(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout_s}s (last value {value!r})")


async def job_row(pool: asyncpg.Pool, job: Job) -> asyncpg.Record:
    return await pool.fetchrow("SELECT * FROM woo_customer_sync_queue WHERE id = $1", job.job_id)


async def wait_state(pool: asyncpg.Pool, job: Job, state: str) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        row = await job_row(pool, job)
        return row if row["state"] == state else None

    return await eventually(f"job {job.job_id} {state}", check)


async def line_states(pool: asyncpg.Pool, job: Job) -> dict[int, str]:
    rows = await pool.fetch(
        "SELECT woo_id, state FROM woo_customer_sync_queue_line WHERE job_id = $1", job.job_id
    )
    return {r["woo_id"]: r["state"] for r in rows}


async def customer_ids(pool: asyncpg.Pool, job: Job) -> list[int]:
    rows = await pool.fetch(
        "SELECT woo_id FROM customer WHERE org_id = $1 AND connection_id = $2 ORDER BY woo_id",
        job.org_id,
        job.connection_id,
    )
    return [r["woo_id"] for r in rows]


async def snapshot(pool: asyncpg.Pool) -> tuple[Any, ...]:
    """Every row version and count a replay could touch."""
    customers = await pool.fetch("SELECT woo_id, xmin::text FROM customer ORDER BY 1")
    lines = await pool.fetch(
        "SELECT job_id, woo_id, xmin::text FROM woo_customer_sync_queue_line ORDER BY 1, 2"
    )
    jobs = await pool.fetch(
        """SELECT id, xmin::text, state, total, done_count, failed_count
           FROM woo_customer_sync_queue ORDER BY id"""
    )
    activity = await pool.fetchval("SELECT count(*) FROM woo_sync_activity")
    return (
        [tuple(r) for r in customers],
        [tuple(r) for r in lines],
        [tuple(r) for r in jobs],
        activity,
    )


async def woosync(settings: Settings, *args: str) -> str:
    """Run the real ``woosync`` command; its stdout, after asserting it succeeded."""
    env = service_env(settings, WOOSYNC_ADMIN_DATABASE_URL=settings.admin_database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "woosync.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


async def listed(settings: Settings, *args: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = json.loads(
        await woosync(settings, "dlq", "list", "--json", *args)
    )["messages"]
    return messages


# -- the CLI ------------------------------------------------------------------------------------


async def test_cli_lists_without_consuming_and_replays_once(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    first = await seed_job(pool, [1, 2, 3, 4, 5, 6])
    second = await seed_job(pool, [11, 12])
    await add_poison_rule(pool)

    async with running_syncer(settings):
        async with running_tracker(settings):
            broker = make_broker(settings)
            await broker.connect()
            try:
                for job, customers in (
                    (first, [customer(1), customer(2), customer(5, first_name=POISON)]),
                    (first, [customer(3), customer(4), customer(6, first_name=POISON)]),
                    (second, [customer(11), customer(12, first_name=POISON)]),
                ):
                    await publish(broker, topology, job.batch(customers))
            finally:
                await broker.stop()
            await wait_state(pool, first, "failed")
            await wait_state(pool, second, "failed")
            await eventually("three batches parked", lambda: _equals(depth(parking), 3))
            async with channel() as ch:  # what the syncer rejects as malformed ends up here too
                await ch.default_exchange.publish(
                    aio_pika.Message(b"{not json", message_id="junk"), routing_key=parking
                )

            # Listing shows every parked message and leaves all of them, in order.
            everything = await listed(settings)
            assert [m["kind"] for m in everything] == ["parked"] * 3 + ["malformed"]
            assert await depth(parking) == 4
            assert [m["message_id"] for m in await listed(settings)] == [
                m["message_id"] for m in everything
            ]
            mine = await listed(settings, "--job", str(first.job_id))
            assert sorted(tuple(m["woo_ids"]) for m in mine) == [(5,), (6,)]
            for message in mine:
                assert (message["job_id"], message["org_id"]) == (
                    str(first.job_id),
                    str(first.org_id),
                )
                # a refusal no retry can fix is parked on its first delivery (issue 8)
                assert message["attempts"] == 1 and message["customers"] == 1
                assert CONSTRAINT in message["error"]
            assert "body is not JSON" in everything[-1]["detail"]
            assert await listed(settings, "--queue", "tracker") == []
            text = await woosync(settings, "dlq", "list", "--job", str(first.job_id))
            assert text.count(" parked ") == 2 and CONSTRAINT in text
            assert await line_states(pool, first) == {
                1: "done", 2: "done", 3: "done", 4: "done", 5: "failed", 6: "failed"
            }  # fmt: skip

            await fix_the_cause(pool)
            out = await woosync(settings, "dlq", "replay", "--job", str(first.job_id))
            assert "replayed 2 message(s) (2 customer(s))" in out, out
            assert "2 failed line(s) re-opened; 1 job(s) re-opened" in out, out
            done = await wait_state(pool, first, "done")
            assert (done["total"], done["done_count"], done["failed_count"]) == (6, 6, 0)
            assert done["last_error"] is None
            assert set((await line_states(pool, first)).values()) == {"done"}
            assert await customer_ids(pool, first) == [1, 2, 3, 4, 5, 6]
            # The other job's batch and the malformed message are still parked, in order.
            left = await listed(settings)
            assert [(m["kind"], m["job_id"]) for m in left] == [
                ("parked", str(second.job_id)),
                ("malformed", None),
            ]
            assert (await job_row(pool, second))["state"] == "failed"
            activity = await pool.fetch(
                "SELECT job_id, details FROM woo_sync_activity WHERE event = 'dlq.replayed'"
            )
            assert [(a["job_id"], a["details"]) for a in activity] == [
                (
                    first.job_id,
                    {
                        "messages": 2,
                        "customers": 2,
                        "lines_reopened": 2,
                        "job_reopened": True,
                        "previous_state": "failed",
                        "by": "cli",
                    },
                )
            ]

        # Replaying again finds nothing of that job and changes nothing.
        before = await snapshot(pool)
        out = await woosync(settings, "dlq", "replay", "--job", str(first.job_id))
        assert "replayed 0 message(s)" in out and "0 job(s) re-opened" in out, out
        assert await snapshot(pool) == before

        # The same batch replayed twice (a duplicate from an interrupted replay): the syncer
        # takes it (it reports line.done, read here with no tracker running) and writes nothing.
        async with channel() as ch:
            events = await ch.declare_queue(topology.tracker_queue.name, passive=True)
            await events.purge()  # events of the first replay the tracker did not read
            await park_like_the_syncer(
                settings, topology, first.batch([customer(5, first_name=POISON)], page=None)
            )
            out = await woosync(settings, "dlq", "replay", "--job", str(first.job_id))
            assert "replayed 1 message(s)" in out and "0 job(s) re-opened" in out, out

            async def line_done_for_5() -> bool:
                message = await events.get(no_ack=True, fail=False)
                return message is not None and LinesDone.model_validate_json(
                    message.body
                ).woo_ids == [5]

            await eventually("the duplicate synced", line_done_for_5)
        activity_rows = before[3] + 1  # the second replay's own audit row, nothing else
        assert await snapshot(pool) == (*before[:3], activity_rows)
        assert await depth(parking) == 2


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


# -- the api ------------------------------------------------------------------------------------


async def test_api_replays_only_the_callers_job(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    async with serving(settings, pool, topology) as api:
        other_org, other_key = await create_org(pool, "other")
        broken = customer(3, first_name="Ada")
        mine = await seed_job(
            pool, [1, 2, 3], org_id=api.org_id, failed={3: broken}, state="failed"
        )
        theirs = await seed_job(
            pool, [7], org_id=other_org, failed={7: customer(7)}, state="failed"
        )
        await pool.execute(
            "UPDATE woo_customer_sync_queue_line SET state = 'done' WHERE woo_id IN (1, 2)"
        )
        await park_like_the_syncer(settings, topology, theirs.batch([customer(7)], page=None))
        await park_like_the_syncer(settings, topology, mine.batch([broken], page=None))

        def body(job: Job) -> dict[str, str]:
            return {"action": "replay", "org_id": str(api.org_id), "job_id": str(job.job_id)}

        async with running_syncer(settings), running_tracker(settings):
            # Another org's job is answered exactly like a job that does not exist.
            response = await api.post(body(theirs))
            assert response.status_code == 404, response.text
            missing = await api.post(body(theirs) | {"job_id": str(uuid4())})
            assert (
                response.json()
                == missing.json()
                == {"error": {"code": "job_not_found", "message": "no such job"}}
            )
            assert await depth(parking) == 2

            response = await api.post(body(mine))
            assert response.status_code == 202, response.text
            result = response.json()
            assert (result["job_id"], result["replayed"], result["customers"]) == (
                str(mine.job_id),
                1,
                1,
            )
            assert (result["lines_reopened"], result["job_reopened"]) == (1, True)
            assert (result["state"], result["failed"], result["finished_at"]) == (
                "processing",
                0,
                None,
            )
            await wait_state(pool, mine, "done")
            assert await line_states(pool, mine) == {1: "done", 2: "done", 3: "done"}
            assert await customer_ids(pool, mine) == [3]

            again = await api.post(body(mine))
            assert again.status_code == 200, again.text
            assert (again.json()["replayed"], again.json()["state"]) == (0, "done")

            # The api replays from the failed lines and never opens the parking queue (issue 8,
            # item 6): both parked copies stay there for the operator, the other org's untouched.
            assert await depth(parking) == 2
            theirs_body = body(theirs) | {"org_id": str(other_org)}
            response = await api.post(theirs_body, key=other_key)
            assert response.status_code == 202, response.text
            await wait_state(pool, theirs, "done")
            assert await depth(parking) == 2
        events = await pool.fetch(
            "SELECT org_id, details FROM woo_sync_activity WHERE event = 'dlq.replayed'"
        )
        assert sorted((e["org_id"] == api.org_id, e["details"]["by"]) for e in events) == [
            (False, "api"),
            (True, "api"),
        ]
