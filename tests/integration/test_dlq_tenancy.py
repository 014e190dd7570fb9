"""One org's dead-letter replay neither reads, holds nor delays another org's parked messages
(issue 8, item 6): the api's ``replay`` works from the org's failed lines, with the real syncer
and tracker, and the shared parking queue is never opened by it."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.auth import create_org
from shared.settings import Settings
from shared.topology import Topology
from tests.factories import make_read_job, small_customer
from tests.helpers import (
    channel,
    customer_ids,
    park_like_the_syncer,
    queue_depth,
    running_syncer,
    running_tracker,
    serving_api,
    wait_state,
)


async def test_one_orgs_replay_leaves_another_orgs_parked_messages_alone(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    async with serving_api(settings, pool, topology) as api:
        other_org, other_key = await create_org(pool, "other")
        mine = await make_read_job(
            pool, [1, 2], org_id=api.org_id, failed={2: small_customer(2)}, state="failed"
        )
        theirs_ids = [7, 8, 9]
        theirs = await make_read_job(
            pool,
            theirs_ids,
            org_id=other_org,
            failed={w: small_customer(w) for w in theirs_ids},
            state="failed",
        )
        await pool.execute(
            "UPDATE woo_customer_sync_queue_line SET state = 'done' WHERE woo_id = 1"
        )
        # The other org's batches are parked ahead of mine, as in a queue shared by every org.
        for woo_id in theirs_ids:
            await park_like_the_syncer(
                settings, topology, theirs.batch([small_customer(woo_id)], page=None)
            )
        await park_like_the_syncer(settings, topology, mine.batch([small_customer(2)], page=None))
        parked_before = await queue_depth(parking)
        assert parked_before == 4

        async with running_syncer(settings), running_tracker(settings):
            response = await api.post(
                {"action": "replay", "org_id": str(api.org_id), "job_id": str(mine.job_id)}
            )
            assert response.status_code == 202, response.text
            assert (response.json()["replayed"], response.json()["customers"]) == (1, 1)
            await wait_state(pool, mine, "done")
            assert await customer_ids(pool, mine) == [2]
            assert await queue_depth(parking) == parked_before

            # The other org's replay works the same way, its customers all synced.
            response = await api.post(
                {"action": "replay", "org_id": str(other_org), "job_id": str(theirs.job_id)},
                key=other_key,
            )
            assert response.status_code == 202, response.text
            assert (response.json()["replayed"], response.json()["customers"]) == (1, 3)
            await wait_state(pool, theirs, "done")
            assert await customer_ids(pool, theirs) == theirs_ids

    # Neither replay delivered any parked message: each is still there, in order, delivered now
    # for the first time (a requeue would set the redelivered flag and, on this quorum queue,
    # the x-delivery-count header).
    async with channel() as ch:
        queue = await ch.declare_queue(parking, passive=True)
        seen = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            seen.append(message)
        try:
            assert [m.redelivered for m in seen] == [False] * parked_before
            assert [(m.headers or {}).get("x-delivery-count", 0) for m in seen] == [0] * 4
            bodies = [m.body.decode() for m in seen]
            assert [str(theirs.job_id) in b for b in bodies] == [True, True, True, False]
        finally:
            for message in seen:
                await message.nack(requeue=True)


async def test_a_replay_does_not_wait_for_a_scan_that_holds_the_parking_queue(
    settings: Settings, clean_broker: Topology, pool: asyncpg.Pool
) -> None:
    """Another reader holds every parked message unacked (an operator's ``dlq list`` of a large
    queue, say): an org's replay is neither blocked by it nor short of its own customers."""
    topology = clean_broker
    parking = topology.parking(topology.syncer_queue).name
    async with serving_api(settings, pool, topology) as api:
        mine = await make_read_job(
            pool, [3], org_id=api.org_id, failed={3: small_customer(3)}, state="failed"
        )
        await park_like_the_syncer(settings, topology, mine.batch([small_customer(3)], page=None))
        async with channel() as ch:
            queue = await ch.declare_queue(parking, passive=True)
            held = await queue.get(no_ack=False)
            async with asyncio.timeout(10):
                response = await api.post(
                    {"action": "replay", "org_id": str(api.org_id), "job_id": str(mine.job_id)}
                )
            assert response.status_code == 202, response.text
            assert response.json()["replayed"] == 1
            sent = await api.drain(topology.syncer_queue.name)
            assert [b["customers"] for b in sent] == [[small_customer(3)]]
            await held.nack(requeue=True)
