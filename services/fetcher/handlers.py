"""Reading one job's customers from its store.

A job is paged with ``role=all&orderby=id&order=asc`` (the defaults hide non-customers and order
unstably), ``per_page`` = the job's batch size. Page 1 tells the totals; the remaining pages are
fetched concurrently, at most ``concurrency`` at a time for this store. For every page the lines
are recorded first, then the batch is published, then the page is marked fetched: a fetcher that
dies anywhere in between re-reads that page when the message is redelivered, and a re-published
batch is harmless because lines and customers are upserts.

Customers added during the crawl land at the end (ids ascend), so after the last known page the
crawl re-reads the last page and continues until a short page. Customers deleted during the crawl
can shift a later customer onto a page already read; see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from services.fetcher import queries as q
from shared import activity
from shared.crypto import SecretBox
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed, Message, SyncRequested
from shared.urlsafety import StoreUrlError, ensure_public_url
from shared.woocommerce import StoreConfig, StoreError

log = logging.getLogger("woosync.fetcher")

Publish = Callable[[Message], Awaitable[None]]


class PageReader(Protocol):
    async def list_customers(self, page: int, per_page: int) -> Any: ...


ClientFactory = Callable[[StoreConfig, int], AbstractAsyncContextManager[PageReader]]


@dataclass(frozen=True)
class FetcherDeps:
    pool: asyncpg.Pool
    secrets: SecretBox
    open_client: ClientFactory  # (store config, max connections) -> client context
    publish: Publish
    # WOOSYNC_ALLOW_PRIVATE_URLS; the store's address is checked again before every crawl.
    allow_private_urls: bool = False


@dataclass
class _Job:
    request: SyncRequested
    batch_size: int
    deps: FetcherDeps

    async def record_page(
        self, page: int, customers: list[dict[str, Any]], *, only_new: bool = False
    ) -> None:
        """Lines, then the batch, then the page mark. ``only_new`` publishes only customers whose
        line did not exist yet (for re-reads of pages already published)."""
        if customers:
            woo_ids = [int(c["id"]) for c in customers]
            inserted = await self.deps.pool.fetch(
                q.INSERT_LINES, self.request.job_id, self.request.org_id, page, woo_ids
            )
            if only_new:
                new = {r["woo_id"] for r in inserted}
                customers = [c for c in customers if int(c["id"]) in new]
        if customers:
            await self.deps.publish(
                CustomerBatch(
                    job_id=self.request.job_id,
                    org_id=self.request.org_id,
                    connection_id=self.request.connection_id,
                    page=page,
                    customers=customers,
                )
            )
        await self.deps.pool.execute(q.MARK_PAGE_FETCHED, self.request.job_id, page, len(customers))


async def handle_sync_requested(request: SyncRequested, deps: FetcherDeps) -> None:
    """Fetch every page not yet fetched for this job. Returns normally when the job is settled
    for the fetcher (completed or failed); raises only for infrastructure errors (retry later)."""
    row = await deps.pool.fetchrow(q.SELECT_JOB_WITH_CONNECTION, request.job_id, request.org_id)
    if row is None:
        log.warning("job %s not found for its org; dropping the request", request.job_id)
        return
    if row["state"] in ("done", "failed") and request.reason != "retry":
        log.info("job %s is already %s; nothing to fetch", request.job_id, row["state"])
        return
    processed = await deps.pool.fetchval(q.MARK_JOB_PROCESSING, request.job_id)
    if processed is None:
        return
    await activity.record(
        deps.pool, org_id=request.org_id, job_id=request.job_id, event="fetch.started",
        details={"process_count": processed},
    )
    config = StoreConfig(
        url=row["store_url"],
        consumer_key=row["consumer_key"],
        consumer_secret=deps.secrets.decrypt(row["consumer_secret_enc"]),
        auth=row["auth_mode"],
        verify_tls=row["verify_tls"],
    )
    job = _Job(request, row["batch_size"], deps)
    try:
        # DNS may have changed since the api checked the URL.
        await ensure_public_url(config.url, allow_private=deps.allow_private_urls)
        pages = await _crawl(job, config, concurrency=row["concurrency"])
    except (StoreError, StoreUrlError) as exc:
        log.warning("job %s: store failed: %s", request.job_id, exc)
        await activity.record(
            deps.pool, org_id=request.org_id, job_id=request.job_id, event="fetch.failed",
            level="error", details={"error": str(exc)},
        )
        await deps.publish(
            FetchFailed(job_id=request.job_id, org_id=request.org_id, error=str(exc))
        )
        return
    lines = await deps.pool.fetchval(q.MARK_FETCH_DONE, request.job_id, pages)
    await activity.record(
        deps.pool, org_id=request.org_id, job_id=request.job_id, event="fetch.completed",
        details={"pages": pages, "customers": lines},
    )
    await deps.publish(
        FetchCompleted(job_id=request.job_id, org_id=request.org_id, pages=pages, customers=lines)
    )


async def _crawl(job: _Job, config: StoreConfig, *, concurrency: int) -> int:
    """Fetch all pages; returns the number of pages the store had at the end."""
    per_page = job.batch_size
    job_id = job.request.job_id
    async with job.deps.open_client(config, concurrency) as client:
        first = await client.list_customers(page=1, per_page=per_page)
        # Without X-WP-TotalPages (a proxy may strip it) the tail loop below reads page by page.
        total_pages = max(first.total_pages or 1, 1)
        await job.deps.pool.execute(q.RECORD_STORE_TOTALS, job_id, first.total, total_pages)
        fetched = {r["page"] for r in await job.deps.pool.fetch(q.SELECT_FETCHED_PAGES, job_id)}
        if 1 not in fetched:
            await job.record_page(1, first.customers)

        limit = asyncio.Semaphore(concurrency)

        async def fetch(page: int) -> None:
            async with limit:
                result = await client.list_customers(page=page, per_page=per_page)
            await job.record_page(page, result.customers)

        try:
            async with asyncio.TaskGroup() as group:
                for page in range(2, total_pages + 1):
                    if page not in fetched:
                        group.create_task(fetch(page))
        except* StoreError as errors:
            raise errors.exceptions[0] from None

        # The store may have grown while we read: re-read the last page, go on to a short one.
        page, last_seen = total_pages, total_pages
        while True:
            result = await client.list_customers(page=page, per_page=per_page)
            if result.customers:
                await job.record_page(page, result.customers, only_new=True)
                last_seen = page
            if len(result.customers) < per_page:
                return last_seen
            page += 1
