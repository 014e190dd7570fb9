"""Dead-letter replay against the real RabbitMQ and PostgreSQL, with the real syncer and tracker.

Customers are parked by a cause that can be fixed: a CHECK constraint added to the test database
refuses ``first_name = 'POISON'``; dropping it is "fixing the cause". Then the parked batches are
replayed with the ``woosync dlq`` command (a real subprocess) and with the api's ``replay``
action, and replaying again must change nothing.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import aio_pika
import asyncpg

from shared.auth import create_org
from shared.broker import make_broker, publish
from shared.messages import LinesDone
from shared.settings import Settings
from shared.topology import Topology
from tests.factories import (
    CONSTRAINT,
    POISON,
    Job,
    add_poison_rule,
    fix_the_cause,
    make_read_job,
    small_customer,
)
from tests.helpers import (
    channel,
    customer_ids,
    job_row,
    line_states,
    park_like_the_syncer,
    queue_depth,
    running_syncer,
    running_tracker,
    serving_api,
    wait_state,
    wait_until,
    woosync,
)

# -- helpers ------------------------------------------------------------------------------------


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
    first = await make_read_job(pool, [1, 2, 3, 4, 5, 6])
    second = await make_read_job(pool, [11, 12])
    await add_poison_rule(pool)

    async with running_syncer(settings):
        async with running_tracker(settings):
            broker = make_broker(settings)
            await broker.connect()
            try:
                for job, customers in (
                    (first, [*map(small_customer, (1, 2)), small_customer(5, first_name=POISON)]),
                    (first, [*map(small_customer, (3, 4)), small_customer(6, first_name=POISON)]),
                    (second, [small_customer(11), small_customer(12, first_name=POISON)]),
                ):
                    await publish(broker, topology, job.batch(customers))
            finally:
                await broker.stop()
            await wait_state(pool, first, "failed")
            await wait_state(pool, second, "failed")
            await wait_until(lambda: _equals(queue_depth(parking), 3), "three batches parked")
            async with channel() as ch:  # what the syncer rejects as malformed ends up here too
                await ch.default_exchange.publish(
                    aio_pika.Message(b"{not json", message_id="junk"), routing_key=parking
                )

            # Listing shows every parked message and leaves all of them, in order.
            everything = await listed(settings)
            assert [m["kind"] for m in everything] == ["parked"] * 3 + ["malformed"]
            assert await queue_depth(parking) == 4
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
            assert (await job_row(pool, second.job_id))["state"] == "failed"
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
                settings, topology, first.batch([small_customer(5, first_name=POISON)], page=None)
            )
            out = await woosync(settings, "dlq", "replay", "--job", str(first.job_id))
            assert "replayed 1 message(s)" in out and "0 job(s) re-opened" in out, out

            async def line_done_for_5() -> bool:
                message = await events.get(no_ack=True, fail=False)
                return message is not None and LinesDone.model_validate_json(
                    message.body
                ).woo_ids == [5]

            await wait_until(line_done_for_5, "the duplicate synced")
        activity_rows = before[3] + 1  # the second replay's own audit row, nothing else
        assert await snapshot(pool) == (*before[:3], activity_rows)
        assert await queue_depth(parking) == 2


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


# -- the api ------------------------------------------------------------------------------------


async def test_api_replays_only_the_callers_job(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    async with serving_api(settings, pool, topology) as api:
        other_org, other_key = await create_org(pool, "other")
        broken = small_customer(3, first_name="Ada")
        mine = await make_read_job(
            pool, [1, 2, 3], org_id=api.org_id, failed={3: broken}, state="failed"
        )
        theirs = await make_read_job(
            pool, [7], org_id=other_org, failed={7: small_customer(7)}, state="failed"
        )
        await pool.execute(
            "UPDATE woo_customer_sync_queue_line SET state = 'done' WHERE woo_id IN (1, 2)"
        )
        await park_like_the_syncer(settings, topology, theirs.batch([small_customer(7)], page=None))
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
            assert await queue_depth(parking) == 2

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
            assert await queue_depth(parking) == 2
            theirs_body = body(theirs) | {"org_id": str(other_org)}
            response = await api.post(theirs_body, key=other_key)
            assert response.status_code == 202, response.text
            await wait_state(pool, theirs, "done")
            assert await queue_depth(parking) == 2
        events = await pool.fetch(
            "SELECT org_id, details FROM woo_sync_activity WHERE event = 'dlq.replayed'"
        )
        assert sorted((e["org_id"] == api.org_id, e["details"]["by"]) for e in events) == [
            (False, "api"),
            (True, "api"),
        ]
