"""Reading one job's customers from its store.

A job is paged with ``role=all&orderby=id&order=asc`` (the defaults hide non-customers and order
unstably) in windows of the job's batch size that overlap a little (see
:mod:`services.fetcher.paging`). Page 1 tells the totals; the remaining pages are fetched
concurrently, at most ``concurrency`` at a time for this store. Customers added during the crawl
land at the end (ids ascend), so the crawl then re-reads the last page and goes on until a short
one. Last, it proves from the windows' id bounds that no customer slipped between two windows
while customers were deleted, and reads again around any spot where one might have.

Every window read is recorded the same way, in one transaction: the lines of the customers that
have none yet are inserted, those customers published (the publish confirmed before the
commit), and the page marked fetched with its bounds (which also shows the job making
progress). So a committed line always means a published customer, and each customer is
published once, even by overlapping windows recorded at the same time. A fetcher that dies
before the commit re-reads that page when the message is redelivered and publishes what has
no line: nothing is lost, and a customer is published twice at most across such a crash
(harmless: lines and customers are upserts).

A fetcher asked to stop (SIGTERM) cancels its crawls and gives their messages back to the queue
at once (:class:`shared.consuming.Requeue`); the next fetcher resumes from the recorded pages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg

from services.fetcher import paging
from services.fetcher import queries as q
from shared import activity
from shared.consuming import Requeue
from shared.crypto import SecretBox, UndecryptableSecret
from shared.db import OrgScope, for_org
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed, Message, SyncRequested
from shared.urlsafety import StoreUrlError, ensure_public_url
from shared.woocommerce import StoreConfig, StoreError

log = logging.getLogger("woosync.fetcher")

Publish = Callable[[Message], Awaitable[None]]


class PageReader(Protocol):
    async def list_customers(
        self, page: int, per_page: int, *, offset: int | None = None
    ) -> Any: ...


ClientFactory = Callable[[StoreConfig, int], AbstractAsyncContextManager[PageReader]]
T = TypeVar("T")

# Extra reads allowed to close gaps, beyond two per page of the store.
GAP_READS_SPARE = 4


@dataclass(frozen=True)
class FetcherDeps:
    pool: asyncpg.Pool
    secrets: SecretBox
    open_client: ClientFactory  # (store config, max connections) -> client context
    publish: Publish
    # WOOSYNC_ALLOW_PRIVATE_URLS; the store's address is checked again before every crawl.
    allow_private_urls: bool = False
    # Set when the service is asked to stop: running crawls give their message back.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Job:
    request: SyncRequested
    batch_size: int
    deps: FetcherDeps
    db: OrgScope

    async def read(
        self, client: PageReader, page: int | None, offset: int
    ) -> tuple[Any, paging.Window]:
        """Read one window and record it; ``page`` None for a re-read that closes a gap."""
        result = await client.list_customers(
            page=page or 1, per_page=self.batch_size, offset=offset
        )
        return result, await self.record(page, offset, result.customers)

    async def record(
        self, page: int | None, offset: int, customers: list[dict[str, Any]]
    ) -> paging.Window:
        """Insert the lines of customers that have none, publish those customers and mark the
        page, in one transaction (see the module docstring)."""
        job_id = self.request.job_id
        ids = [int(c["id"]) for c in customers]
        window = paging.Window.of(offset, ids)
        async with self.db.transaction() as conn:
            # An overlapping window being recorded concurrently holds its new lines until it
            # commits; this insert waits for it and then finds them there.
            rows = await conn.fetch(
                q.INSERT_LINES, job_id, self.request.org_id, page, sorted(set(ids))
            )
            created = {r["woo_id"] for r in rows}
            new = list({int(c["id"]): c for c in customers if int(c["id"]) in created}.values())
            if new:
                await self.deps.publish(
                    CustomerBatch(
                        job_id=job_id,
                        org_id=self.request.org_id,
                        connection_id=self.request.connection_id,
                        page=page,
                        customers=new,
                    )
                )
            # The job row's lock is taken last, so concurrent windows hold it only to commit.
            if page is None:
                await conn.execute(q.TOUCH_JOB, job_id, self.request.org_id)
            else:
                await conn.execute(
                    q.MARK_PAGE_FETCHED,
                    job_id,
                    page,
                    window.count,
                    offset,
                    window.first_id,
                    window.last_id,
                    self.request.org_id,
                )
        return window


async def handle_sync_requested(request: SyncRequested, deps: FetcherDeps) -> None:
    """Fetch every page not yet fetched for this job. Returns normally when the job is settled
    for the fetcher (completed or failed); raises only for infrastructure errors (retry later),
    or :class:`Requeue` when the service stops mid-crawl."""
    if deps.stopping.is_set():
        raise Requeue("the fetcher is stopping")
    scope = for_org(deps.pool, request.org_id)
    row = await scope.fetchrow(q.SELECT_JOB_WITH_CONNECTION, request.job_id, request.org_id)
    if row is None:
        log.warning("job %s not found for its org; dropping the request", request.job_id)
        return
    if row["state"] in ("done", "failed") and request.reason != "retry":
        log.info("job %s is already %s; nothing to fetch", request.job_id, row["state"])
        return
    processed = await scope.fetchval(q.MARK_JOB_PROCESSING, request.job_id, request.org_id)
    if processed is None:
        return
    log.info("job %s: reading its store (taken up %d times)", request.job_id, processed)
    await activity.record(
        scope,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.started",
        details={"process_count": processed},
    )
    job = _Job(request, row["batch_size"], deps, scope)
    try:
        config = StoreConfig(
            url=row["store_url"],
            consumer_key=row["consumer_key"],
            consumer_secret=deps.secrets.decrypt(row["consumer_secret_enc"]),
            auth=row["auth_mode"],
            verify_tls=row["verify_tls"],
        )
        # DNS may have changed since the api checked the URL.
        await ensure_public_url(config.url, allow_private=deps.allow_private_urls)
        pages = await _unless_stopping(
            _crawl(job, config, concurrency=row["concurrency"]), deps.stopping
        )
    except (StoreError, StoreUrlError, UndecryptableSecret) as exc:
        log.warning("job %s: store failed: %s", request.job_id, exc)
        await activity.record(
            scope,
            org_id=request.org_id,
            job_id=request.job_id,
            event="fetch.failed",
            level="error",
            details={"error": str(exc)},
        )
        await deps.publish(
            FetchFailed(job_id=request.job_id, org_id=request.org_id, error=str(exc))
        )
        return
    lines = await scope.fetchval(q.MARK_FETCH_DONE, request.job_id, pages, request.org_id)
    await activity.record(
        scope,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.completed",
        details={"pages": pages, "customers": lines},
    )
    await deps.publish(
        FetchCompleted(job_id=request.job_id, org_id=request.org_id, pages=pages, customers=lines)
    )


async def _unless_stopping(work: Awaitable[T], stopping: asyncio.Event) -> T:
    """``work``'s result; if the service is asked to stop first, cancel it and raise Requeue.

    Cancelling anywhere is safe: a page is marked fetched only after its customers are
    published and their lines inserted."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stop.cancel()
    if not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
        raise Requeue("the fetcher is stopping; the crawl resumes from its recorded pages")
    return task.result()


async def _crawl(job: _Job, config: StoreConfig, *, concurrency: int) -> int:
    """Fetch all pages, prove none was missed; returns the number of pages the store had."""
    per_page = job.batch_size
    job_id = job.request.job_id
    async with job.deps.open_client(config, concurrency) as client:
        first, window = await job.read(client, 1, 0)
        # Without X-WP-Total (a proxy may strip it) the tail loop below reads page by page.
        total_pages = paging.pages_for(first.total, per_page)
        org_id = job.request.org_id
        await job.db.execute(q.RECORD_STORE_TOTALS, job_id, first.total, total_pages, org_id)
        fetched = {
            r["page"]: r for r in await job.db.fetch(q.SELECT_FETCHED_PAGES, job_id, org_id)
        }
        windows = [window]
        windows += [
            paging.Window(r["start_offset"], r["customers"], r["first_id"], r["last_id"])
            for r in fetched.values()
            if r["start_offset"] is not None and r["page"] > 1
        ]

        limit = asyncio.Semaphore(concurrency)

        async def fetch(page: int) -> None:
            offset = paging.page_offset(page, per_page)
            async with limit:
                _, window = await job.read(client, page, offset)
            windows.append(window)

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
            result, window = await job.read(client, page, paging.page_offset(page, per_page))
            windows.append(window)
            if result.customers:
                last_seen = page
            if len(result.customers) < per_page:
                break
            page += 1

        await _close_gaps(job, client, windows, budget=GAP_READS_SPARE + 2 * last_seen)
        return last_seen


async def _close_gaps(
    job: _Job, client: PageReader, windows: list[paging.Window], *, budget: int
) -> None:
    """Read around every spot where a customer may have slipped between two windows until the
    windows join (see :mod:`services.fetcher.paging`); at most ``budget`` reads."""
    per_page = job.batch_size
    reads = 0
    while (gaps := paging.find_gaps(windows, per_page)) and reads < budget:
        walk = paging.GapWalk(gaps[0], per_page)
        log.info(
            "job %s: no page proves %s complete (customers deleted during the crawl?); "
            "reading again from offset %d",
            job.request.job_id,
            walk.gap.describe(),
            walk.offset,
        )
        while not walk.done and reads < budget:
            _, window = await job.read(client, None, walk.offset)
            reads += 1
            windows.append(window)
            walk.saw(window)
    if gaps:
        log.warning(
            "job %s: the store changed faster than it could be read; %d spots unproven",
            job.request.job_id,
            len(gaps),
        )
        await activity.record(
            job.db,
            org_id=job.request.org_id,
            job_id=job.request.job_id,
            event="fetch.unverified",
            level="warning",
            details={"gaps": [[g.after, g.before] for g in gaps[:20]], "reads": reads},
        )
