"""The fetcher's handler against a real simulated store and a real database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from services.fetcher.handlers import FetcherDeps, handle_sync_requested
from shared.crypto import SecretBox
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed, Message
from shared.woocommerce import CustomerPage
from tests.helpers import (
    FETCHER_SECRETS,
    Recorder,
    fetcher_deps,
    job_row,
    queue_new_org_sync,
)
from tools.woosim.testing import running_simulator


async def test_reads_every_customer_of_every_role_once(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=537, seed=3) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=3)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        store_ids = [c["id"] for c in await sim.customers()]
        requests = (await sim.stats())["requests"]

    assert sorted(recorder.customer_ids()) == store_ids  # each exactly once, none missing
    roles = {c["role"] for b in recorder.of(CustomerBatch) for c in b.customers}
    assert {"customer", "administrator", "subscriber"} <= roles
    assert all("_links" not in c for b in recorder.of(CustomerBatch) for c in b.customers)
    lines = await pool.fetch(
        "SELECT woo_id, state FROM woo_customer_sync_queue_line WHERE job_id = $1", request.job_id
    )
    assert sorted(r["woo_id"] for r in lines) == store_ids
    assert {r["state"] for r in lines} == {"pending"}
    (completed,) = recorder.of(FetchCompleted)
    # Windows of 50 that overlap by 2: offsets 0, 48, ..., 528; the last, read after every other
    # was started, is short and no answer counted more customers: it is not read again.
    assert completed.customers == 537 and completed.pages == 12
    assert requests == 12  # a quiet store needs no reads to prove the windows joined
    assert recorder.messages[-1] is completed  # the tracker may finish the job only after this
    job = await job_row(pool, request.job_id)
    assert job["state"] == "processing" and job["fetch_done_at"] is not None
    assert job["store_total"] == 537 and job["process_count"] == 1
    for batch in recorder.of(CustomerBatch):
        assert batch.job_id == request.job_id and batch.connection_id == request.connection_id


async def test_redelivery_resumes_without_losing_or_duplicating(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=300, seed=4) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50)
        first = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, first))
        # A crash after pages 1-3 were recorded: forget pages 4-6 and their lines.
        await pool.execute(
            "DELETE FROM woo_customer_sync_page WHERE job_id = $1 AND page > 3", request.job_id
        )
        await pool.execute(
            "DELETE FROM woo_customer_sync_queue_line WHERE job_id = $1 AND page > 3",
            request.job_id,
        )
        await pool.execute(
            "UPDATE woo_customer_sync_queue SET fetch_done_at = NULL WHERE id = $1", request.job_id
        )
        kept = {
            r["woo_id"]
            for r in await pool.fetch(
                "SELECT woo_id FROM woo_customer_sync_queue_line WHERE job_id = $1",
                request.job_id,
            )
        }
        again = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, again))
        store_ids = [c["id"] for c in await sim.customers()]

    assert 100 < len(kept) < 300
    # Only what had no line is published again, once.
    assert sorted(again.customer_ids()) == sorted(set(store_ids) - kept)
    lines = await pool.fetchval(
        "SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1", request.job_id
    )
    assert lines == 300
    assert (await job_row(pool, request.job_id))["process_count"] == 2


async def test_customers_added_before_the_tail_are_read(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=120, seed=5) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50)
        recorder = Recorder()
        deps = fetcher_deps(pool, recorder)
        added: list[int] = []

        async def publish_then_grow(message: Message) -> None:
            await recorder(message)
            # While the first page is being published, the store gains two customers.
            if isinstance(message, CustomerBatch) and message.page == 1 and not added:
                for n in range(2):
                    created = await sim.add_customer(email=f"late{n}@example.com")
                    added.append(created["id"])

        await handle_sync_requested(request, FetcherDeps(
            deps.pool, FETCHER_SECRETS, deps.open_client, publish_then_grow, True
        ))  # fmt: skip
        store_ids = [c["id"] for c in await sim.customers()]

    assert len(store_ids) == 122 and set(added) <= set(recorder.customer_ids())
    assert sorted(set(recorder.customer_ids())) == store_ids


async def test_a_store_of_one_short_page_is_read_once(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=40, seed=26) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=100)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        store_ids = [c["id"] for c in await sim.customers()]
        requests = (await sim.stats())["requests"]

    (completed,) = recorder.of(FetchCompleted)
    assert sorted(recorder.customer_ids()) == store_ids and completed.customers == 40
    assert requests == 1  # its only read is also the last one started


class LateGrowingStore:
    """300 customers in windows of 100 (offsets 0, 95, 190, 285): the window at 190 is answered
    only after the last one (285), and three customers are created in between, so the last
    window's answer is short and counts 300 while a later answer counts 303."""

    def __init__(self) -> None:
        self.ids = list(range(1, 301))
        self.tail_answered = asyncio.Event()
        self.offsets: list[int] = []

    async def list_customers(self, page: int, per_page: int, *, offset: int | None = None) -> Any:
        start = offset or 0
        if start == 190 and len(self.ids) == 300:
            await self.tail_answered.wait()
            self.ids += [301, 302, 303]
        chunk = self.ids[start : start + per_page]
        self.offsets.append(start)
        if start == 285:
            self.tail_answered.set()
        customers = [{"id": i, "email": f"c{i}@example.com"} for i in chunk]
        return CustomerPage(customers, len(self.ids), None, page)


async def test_a_store_grown_after_its_last_page_was_answered_is_read_to_its_new_end(
    pool: asyncpg.Pool,
) -> None:
    """The last page is read beside the pages still in flight, not after them; when a later
    answer counts more customers than it did, the last page is read again after all others."""
    async with running_simulator(customers=1, seed=25) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=100, concurrency=2)
    store = LateGrowingStore()

    @contextlib.asynccontextmanager
    async def open_client(config: Any, concurrency: int, gate: Any = None) -> AsyncIterator[Any]:
        yield store

    recorder = Recorder()
    deps = dataclasses.replace(fetcher_deps(pool, recorder), open_client=open_client)
    await asyncio.wait_for(handle_sync_requested(request, deps), 30)

    (completed,) = recorder.of(FetchCompleted)
    assert sorted(recorder.customer_ids()) == list(range(1, 304))
    assert completed.customers == 303
    assert store.offsets.count(285) == 2  # beside page 3 first, then again after it
    assert store.offsets.index(285) < store.offsets.index(190)


async def test_customers_deleted_during_the_crawl_do_not_hide_others(
    pool: asyncpg.Pool,
) -> None:
    """Ten customers of page 1 are deleted right after it is read: every later customer moves
    ten places down, so page 2's window starts past eight customers no window has shown yet.
    The crawl sees that its windows do not join and reads that spot again."""
    async with running_simulator(customers=300, seed=8) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=1)
        recorder = Recorder()
        deleted: list[int] = []

        async def publish_then_delete(message: Message) -> None:
            await recorder(message)
            if isinstance(message, CustomerBatch) and message.page == 1 and not deleted:
                for customer in message.customers[5:15]:
                    await sim.delete_customer(customer["id"])
                    deleted.append(customer["id"])

        deps = fetcher_deps(pool, recorder)
        await handle_sync_requested(
            request,
            FetcherDeps(deps.pool, FETCHER_SECRETS, deps.open_client, publish_then_delete, True),
        )
        remaining = [c["id"] for c in await sim.customers()]

    published = recorder.customer_ids()
    assert len(published) == len(set(published)) == 300  # none twice; the deleted ones too
    assert set(remaining) | set(deleted) == set(published)
    lines = await pool.fetchval(
        "SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1", request.job_id
    )
    assert lines == 300


async def test_revoked_key_fails_the_job_with_a_clear_error(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=10, seed=6) as sim:
        request = await queue_new_org_sync(pool, sim)
        await sim.revoke_keys()
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        requests_made = (await sim.stats())["requests"]

    (failed,) = recorder.of(FetchFailed)
    assert "401" in failed.error or "refused" in failed.error.lower()
    assert sim.consumer_secret not in failed.error
    assert recorder.of(CustomerBatch) == []
    assert requests_made <= 2  # no retry storm on a refused key


async def test_store_that_keeps_failing_fails_the_job(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=10, seed=7) as sim:
        request = await queue_new_org_sync(pool, sim)
        await sim.set_faults(rate_5xx=1.0)
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))

    (failed,) = recorder.of(FetchFailed)
    assert failed.error
    assert (await job_row(pool, request.job_id))["fetch_done_at"] is None


async def test_secret_no_key_decrypts_fails_the_job_clearly(pool: asyncpg.Pool) -> None:
    async with running_simulator(customers=10, seed=8) as sim:
        request = await queue_new_org_sync(pool, sim)
        await pool.execute(
            "UPDATE woo_connections SET consumer_secret_enc = $1 WHERE id = $2",
            SecretBox("a key this fetcher does not have").encrypt(sim.consumer_secret),
            request.connection_id,
        )
        recorder = Recorder()
        await handle_sync_requested(request, fetcher_deps(pool, recorder))
        requests_made = (await sim.stats())["requests"]

    (failed,) = recorder.of(FetchFailed)
    assert "cannot be decrypted" in failed.error
    assert recorder.of(CustomerBatch) == [] and requests_made == 0


async def test_reads_finished_during_a_record_are_recorded_together(pool: asyncpg.Pool) -> None:
    """Pages read while another page's record is under way go out in one transaction and one
    message (``RECORD_GROUP_READS``), each still marked as its own page, each customer once."""
    async with running_simulator(customers=340, seed=27) as sim:
        request = await queue_new_org_sync(pool, sim, batch_size=50, concurrency=3)
        recorder = Recorder()
        deps = fetcher_deps(pool, recorder)
        held = False

        async def publish_slowly(message: Message) -> None:
            nonlocal held
            if isinstance(message, CustomerBatch) and (message.page or 0) > 1 and not held:
                held = True
                # The first page the workers read is being recorded: let the other two workers
                # read theirs meanwhile (page 1 and three more requests).
                for _ in range(200):
                    if (await sim.stats())["requests"] >= 4:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
            await recorder(message)

        await handle_sync_requested(request, dataclasses.replace(deps, publish=publish_slowly))
        store_ids = [c["id"] for c in await sim.customers()]

    batches = recorder.of(CustomerBatch)
    assert sorted(recorder.customer_ids()) == store_ids  # each exactly once, none missing
    (completed,) = recorder.of(FetchCompleted)
    assert completed.pages == 8  # windows of 50 overlapping by 2
    # Two pages read during the held record went out as one batch, named by its first page.
    assert max(len(b.customers) for b in batches) > 50
    assert len(batches) < completed.pages
    grouped = next(b for b in batches if len(b.customers) > 50)
    assert grouped.page is not None and grouped.page > 2
    pages = await pool.fetch(
        "SELECT page, customers FROM woo_customer_sync_page WHERE job_id = $1 ORDER BY page",
        request.job_id,
    )
    assert [p["page"] for p in pages] == list(range(1, 9))
    lines = await pool.fetch(
        "SELECT woo_id, page FROM woo_customer_sync_queue_line WHERE job_id = $1", request.job_id
    )
    assert sorted(r["woo_id"] for r in lines) == store_ids
    assert {r["page"] for r in lines} == set(range(1, 9))
