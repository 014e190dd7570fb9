"""Reading one job's customers from its store.

A job is paged with ``role=all&orderby=id&order=asc`` (the defaults hide non-customers and order
unstably) in windows of the job's batch size that overlap a little (see
:mod:`services.fetcher.paging`). Page 1 tells the totals; the remaining pages are fetched
concurrently, at most ``concurrency`` at a time for this store, or, for a job started without
that option, as many as the store sustains (:mod:`shared.storelimit`: the store's limit is found
while reading, shared by every fetcher reading the store, and remembered). Customers added
during the crawl land at the end (ids ascend), so the last page is read after every other page
was started (the last one handed to a worker, beside the pages still in flight); a store that
grew meanwhile shows it there (a full page, or a larger ``X-WP-Total`` on any later answer), and
then the crawl reads the last page again, after all others, and goes on until a short one. A
store of one short page is read once. Last, it proves from the windows' id bounds that no
customer slipped between two windows while customers were deleted, and reads again around any
spot where one might have.

Every window read is recorded the same way, in one transaction: the lines of the customers that
have none yet are inserted, those customers published (the publish confirmed before the
commit), and the page marked fetched with its bounds. The reads a crawl's workers finish while
one record is under way wait for it and are then recorded together, up to
``RECORD_GROUP_READS`` in one transaction and one message: when recording is the slower part,
the messages grow instead of queueing, so RabbitMQ, the syncer and PostgreSQL pay their cost per
message and per transaction once for several pages. So a committed line always means a
published customer, and each customer is published once, even by overlapping windows recorded
at the same time (the later one waits for the earlier one's new lines to commit; the commit does
not wait for the WAL flush, and the job's row, its sign of life for stall detection, is written
at most every ``queries.HEARTBEAT_MS``, so that wait stays short). A fetcher that dies
before the commit re-reads that page when the message is redelivered and publishes what has
no line: nothing is lost, and a customer is published twice at most across such a crash
(harmless: lines and customers are upserts).

A fetcher asked to stop (SIGTERM) cancels its crawls and gives their messages back to the queue
at once (:class:`shared.consuming.Requeue`); the next fetcher resumes from the recorded pages.

What the store says is checked, not trusted (see docs/architecture.md, "A store's word"):

* ``X-WP-Total`` above ``WOOSYNC_MAX_STORE_CUSTOMERS`` fails the job at once; pages are read by
  ``concurrency`` workers pulling page numbers, so memory does not grow with the claim.
* A page shorter than asked while its own ``X-WP-Total`` says there is more: on page 1 the
  store caps its page size, and the job reads with that size from then on (recorded as its
  batch size); on a later page, the job fails saying so. At the end, the job's distinct lines
  must reach the store's latest total, and a gap the re-reads could not close fails the job:
  ``done`` means every customer was read.
* Ids must ascend within a page (``orderby=id&order=asc``), or the window proof means nothing:
  the job fails naming the page.
* An item without a usable id fails alone (:mod:`services.fetcher.items`).
* Any other error that is not the database's or the broker's fails the job with its text,
  instead of parking the request and leaving the job in ``processing``.

A crawl stops within a page when its job becomes final (forced done, failed as stalled,
cancelled): each page's record checks the job in its transaction, and a watcher checks every
``WOOSYNC_CRAWL_CHECK_INTERVAL_S`` while requests are in flight and cancels the workers. A paused
job's crawl stops as soon: no new request goes out once the watcher (or a page's record) sees
``paused``, but requests in flight are answered and recorded (their batches reach the syncer,
which holds them), so a resume reads no page twice; then the crawl records that it stopped
(``crawl_stopped_at``, ``fetch.paused``) and its delivery is acked. A resumed crawl takes the
recorded first page's totals instead of reading it again. After
``WOOSYNC_CRAWL_SLICE_S`` a crawl stops taking pages, publishes a fresh ``sync.requested`` for
its job and returns, so its delivery is acked long before RabbitMQ's ``consumer_timeout``; the
next delivery resumes from the recorded pages.

A crawl reads only so far ahead of the syncer (:mod:`services.fetcher.backlog`): before each
page it waits while its job's published-but-unsettled customers, plus the pages it is reading,
would exceed its share of the fetcher's ``WOOSYNC_FETCH_BACKLOG_CUSTOMERS``, so the syncer's one
queue holds a few batches of every job and the jobs progress side by side. Waiting is between
pages: the watcher and ``stopping`` cancel it as any read; a pause or the slice's end is seen
at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, TypeVar
from uuid import UUID

import asyncpg

from services.fetcher import items, paging
from services.fetcher import queries as q
from services.fetcher.backlog import Backlog, CrawlBacklog
from services.fetcher.guests import OrdersIncomplete, read_guest_orders
from services.fetcher.preview import compare_store, preview_result
from services.fetcher.preview_read import StoreTooLarge, read_store
from shared import activity
from shared.broker import DEFAULT_MAX_MESSAGE_BYTES, split_customer_batch
from shared.consuming import Requeue, is_infrastructure_error
from shared.crypto import SecretBox, UndecryptableSecret
from shared.db import OrgScope, for_org
from shared.guests import MAX_SKIPPED_SHOWN
from shared.lifecycle import FINAL_JOB_STATES, RUNNING_JOB_STATES, JobState
from shared.messages import CustomerBatch, FetchCompleted, FetchFailed, Message, SyncRequested
from shared.storelimit import StoreLimits
from shared.storeurl import store_identity
from shared.urlsafety import StoreUrlError, ensure_public_url
from shared.woocommerce import RequestGate, StoreConfig, StoreError

log = logging.getLogger("woosync.fetcher")

Publish = Callable[[Message], Awaitable[None]]


class PageReader(Protocol):
    async def list_customers(
        self, page: int, per_page: int, *, offset: int | None = None
    ) -> Any: ...

    async def list_guest_orders(
        self, page: int, per_page: int, *, offset: int | None = None
    ) -> Any: ...


T = TypeVar("T")
# (store config, max connections, gate admitting each attempt or None) -> client context
ClientFactory = Callable[
    [StoreConfig, int, RequestGate | None], AbstractAsyncContextManager[PageReader]
]
PageObserver = Callable[[UUID, float, str | None], None]

# Extra reads allowed to close gaps, beyond two per page of the store.
GAP_READS_SPARE = 4
# Reads of one crawl recorded in one transaction and one message at most (``_Job.record``): the
# pages its workers finished while a record was under way. Each message and each transaction has
# a cost of its own (RabbitMQ's, the syncer's, PostgreSQL's), the same for 100 customers as for
# 400; beyond a few pages the syncer's batches grow for little.
RECORD_GROUP_READS = 4
ERROR_LIMIT = 1000


class CrawlFailed(Exception):
    """The store's answers cannot be read completely (or not proven so): the job fails."""


class JobClosed(Exception):
    """The job became final (forced done, failed) while its crawl ran: the crawl stops."""


class JobPaused(Exception):
    """The job was paused: the crawl took no new page, and stops once its reads are recorded."""


class SliceOver(Exception):
    """The crawl used its time slice: it hands the job on to a fresh delivery."""


@dataclass(frozen=True)
class FetcherDeps:
    pool: asyncpg.Pool
    secrets: SecretBox
    open_client: ClientFactory
    publish: Publish
    # WOOSYNC_ALLOW_PRIVATE_URLS; the store's address is checked again before every crawl.
    allow_private_urls: bool = False
    # Set when the service is asked to stop: running crawls give their message back.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    max_store_customers: int = 10_000_000  # WOOSYNC_MAX_STORE_CUSTOMERS
    slice_s: float = 900.0  # WOOSYNC_CRAWL_SLICE_S
    check_interval_s: float = 0.5  # WOOSYNC_CRAWL_CHECK_INTERVAL_S
    # WOOSYNC_MAX_MESSAGE_BYTES: a page's customers go out in as many batches as that needs.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    preview_max_customers: int = 50_000  # WOOSYNC_PREVIEW_JOB_MAX_CUSTOMERS
    # Told of every page read: (connection id, seconds, None or the failure's kind); metrics.
    observe_page: PageObserver | None = None
    # The stores' adaptive limits; None: a job without a concurrency option reads with
    # ``default_concurrency`` workers.
    store_limits: StoreLimits | None = None
    default_concurrency: int = 4  # WOOSYNC_DEFAULT_CONCURRENCY
    # WOOSYNC_FETCH_BACKLOG_CUSTOMERS shared by this fetcher's crawls (services.fetcher.backlog);
    # None: a crawl reads as far ahead of the syncer as it likes.
    backlog: Backlog | None = None


@dataclass
class _Read:
    """One read's answer, checked, on its way to be recorded (``_Job.record``)."""

    page: int | None
    customers: list[Any]
    rejected: list[items.Rejected]
    ids: list[int]  # the customers' ids, in the store's order
    window: paging.Window
    recorded: bool = False
    error: Exception | None = None  # why its group's record failed

    @classmethod
    def of(cls, page: int | None, offset: int, page_items: list[Any]) -> _Read:
        customers, rejected = items.split(page_items)
        ids = [int(c["id"]) for c in customers]
        window = paging.Window.of(offset, ids, count=len(page_items))
        return cls(page, customers, rejected, ids, window)

    @property
    def line_ids(self) -> list[int]:
        return sorted(set(self.ids))

    @property
    def settled(self) -> bool:
        return self.recorded or self.error is not None


@dataclass
class _Job:
    request: SyncRequested
    batch_size: int
    deps: FetcherDeps
    db: OrgScope
    deadline: float  # loop time at which the crawl's slice is over
    latest_total: int | None = None  # X-WP-Total of the latest answer that had one
    max_total: int | None = None  # the largest X-WP-Total any answer of the crawl gave
    pausing: bool = False  # the job was seen paused: no new request goes out
    backlog: CrawlBacklog | None = None  # its share of the fetcher's backlog budget
    # Reads waiting to be recorded, and the lock of the one record under way (``record``).
    _unrecorded: list[_Read] = field(default_factory=list)
    _recording: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def sliced(self) -> bool:
        return asyncio.get_running_loop().time() >= self.deadline

    async def admit(self) -> bool:
        """Waits until the job's backlog leaves room for one more page (True, the page then
        counts as in flight until ``release``); False once the job is paused or the slice is
        over meanwhile: no page may be taken."""
        if self.backlog is None:
            return True
        return await self.backlog.admit(self.batch_size, lambda: self.pausing or self.sliced)

    def release(self) -> None:
        """The admitted page is recorded (or failed): it no longer counts as in flight."""
        if self.backlog is not None:
            self.backlog.release()

    async def fetch(self, client: PageReader, page: int | None, offset: int) -> Any:
        """Read one window; checks what the answer claims (see the module docstring)."""
        if self.pausing:
            raise JobPaused()
        started = time.monotonic()
        error: str | None = None
        try:
            result = await client.list_customers(
                page=page or 1, per_page=self.batch_size, offset=offset
            )
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            if self.deps.observe_page is not None:
                self.deps.observe_page(
                    self.request.connection_id, time.monotonic() - started, error
                )
        for name, value in (("X-WP-Total", result.total), ("X-WP-TotalPages", result.total_pages)):
            problem = items.total_problem(name, value, self.deps.max_store_customers)
            if problem:
                raise CrawlFailed(problem)
        if result.total is not None:
            self.latest_total = result.total
            self.max_total = max(self.max_total or 0, result.total)
        return result

    def ends_the_store(self, result: Any) -> bool:
        """Whether a read of the last page, started after every other read of the crawl, shows
        where the store ends: a short page, and no answer of the crawl counted more customers
        (none was created after it that an answer saw)."""
        return (
            len(result.customers) < self.batch_size
            and result.total is not None
            and self.max_total is not None
            and result.total >= self.max_total
        )

    async def read(
        self, client: PageReader, page: int | None, offset: int
    ) -> tuple[Any, paging.Window]:
        """Read one window and record it; ``page`` None for a re-read that closes a gap."""
        result = await self.fetch(client, page, offset)
        count = len(result.customers)
        if paging.short_page_contradicts(offset, count, self.batch_size, result.total):
            raise CrawlFailed(
                f"the store answered {count} customers at offset {offset} where {self.batch_size} "
                f"were asked for, while reporting {result.total:,} in all (X-WP-Total): its total "
                "is wrong, or it caps its page size (a caching plugin?); the short page cannot "
                "end the crawl"
            )
        return result, await self.record(page, offset, result.customers)

    async def record(self, page: int | None, offset: int, page_items: list[Any]) -> paging.Window:
        """Record one read (see the module docstring): with the reads the crawl's other workers
        finished meanwhile, in one transaction and one message (``_record_group``). Returns once
        this read is committed; raises JobClosed when the job is final by then."""
        read = _Read.of(page, offset, page_items)
        disorder = items.out_of_order(read.ids)
        if disorder is not None:
            where = f"page {page}" if page else "a re-read"
            raise CrawlFailed(
                f"the store does not return customers in ascending id order ({where} at offset "
                f"{offset}: id {disorder[1]} after id {disorder[0]}), although asked for "
                "orderby=id&order=asc; woosync cannot prove it read every customer of such a "
                "store (a plugin or cache changing the order?)"
            )
        self._unrecorded.append(read)
        async with self._recording:
            while not read.settled:
                group = self._unrecorded[:RECORD_GROUP_READS]
                del self._unrecorded[: len(group)]
                try:
                    await self._record_group(group)
                except Exception as exc:
                    for other in group:
                        other.error = exc
                except BaseException:
                    # Cancelled mid-record: nothing of the group was committed; whoever records
                    # next takes the others' reads again.
                    self._unrecorded[:0] = [r for r in group if r is not read]
                    raise
                else:
                    for other in group:
                        other.recorded = True
        if read.error is not None:
            raise read.error
        return read.window

    async def _record_group(self, group: list[_Read]) -> None:
        """Insert the lines of the group's customers that have none, publish those customers
        and mark each read's page, in one transaction (see the module docstring)."""
        job_id, org_id = self.request.job_id, self.request.org_id
        published = 0
        async with self.db.transaction() as conn:
            state = await conn.fetchval(q.LOCK_JOB_STATE, job_id, org_id)
            if state is None or state in FINAL_JOB_STATES:
                raise JobClosed()
            if state == JobState.PAUSED:
                self.pausing = True  # these reads are recorded; the next is not made
            # What this transaction writes can be derived again: a commit lost in a database
            # crash leaves the pages unrecorded, so they are read and their customers published
            # again (as after a fetcher's crash). Not waiting for the WAL flush (LOCK_JOB_STATE
            # turned synchronous_commit off) shortens the time the new lines stay locked, which
            # overlapping windows being recorded wait for.
            # An overlapping window being recorded concurrently holds its new lines until it
            # commits; this insert waits for it and then finds them there. Two reads of the
            # group that overlap: the later finds the earlier's lines, so a customer is
            # published once.
            new: dict[int, Any] = {}
            pages: dict[int, int | None] = {}
            for read in group:
                rows = await conn.fetch(q.INSERT_LINES, job_id, org_id, read.page, read.line_ids)
                created = {r["woo_id"] for r in rows}
                for customer in read.customers:
                    woo_id = int(customer["id"])
                    if woo_id in created:
                        new[woo_id] = customer
                        pages[woo_id] = read.page
                if read.rejected:
                    await self._reject(conn, read.page, read.rejected)
            if new:
                numbered = [r.page for r in group if r.page is not None]
                whole = CustomerBatch(
                    job_id=job_id,
                    org_id=org_id,
                    connection_id=self.request.connection_id,
                    page=min(numbered) if numbered else None,
                    customers=list(new.values()),
                )
                batches, oversize = split_customer_batch(whole, self.deps.max_message_bytes)
                for read in group:
                    unsendable = [
                        items.Rejected(
                            int(o.customer["id"]),
                            f"rejected by the fetcher: {o.error}; not synced",
                        )
                        for o in oversize
                        if pages[int(o.customer["id"])] == read.page
                    ]
                    if unsendable:
                        await self._fail_unsendable(conn, read.page, unsendable)
                for batch in batches:
                    await self.deps.publish(batch)
                published = sum(len(b.customers) for b in batches)
            # The job row's lock is taken last, so concurrent windows hold it only to commit.
            for read in group:
                if read.page is None:
                    still_open = await conn.fetchval(q.TOUCH_JOB, job_id, org_id)
                else:
                    window = read.window
                    still_open = await conn.fetchval(
                        q.MARK_PAGE_FETCHED,
                        job_id,
                        read.page,
                        window.count,
                        window.offset,
                        window.first_id,
                        window.last_id,
                        org_id,
                    )
                if not still_open:
                    raise JobClosed()
        if self.backlog is not None:
            self.backlog.published(published)

    async def _fail_unsendable(
        self, conn: asyncpg.Connection, page: int | None, unsendable: list[items.Rejected]
    ) -> None:
        """Customers no message can carry (too large): their lines fail now."""
        await conn.execute(
            q.FAIL_LINES,
            self.request.job_id,
            self.request.org_id,
            [r.woo_id for r in unsendable],
            [r.error for r in unsendable],
        )
        await self._report_rejected(conn, page, unsendable)

    async def _reject(
        self, conn: asyncpg.Connection, page: int | None, rejected: list[items.Rejected]
    ) -> None:
        """Items that are no storable customer become failed lines (once, however often read)."""
        unique = {r.woo_id: r for r in rejected}
        created = await conn.fetch(
            q.INSERT_REJECTED_LINES,
            self.request.job_id,
            self.request.org_id,
            page,
            list(unique),
            [r.error for r in unique.values()],
        )
        if created:
            await self._report_rejected(conn, page, [unique[r["woo_id"]] for r in created])

    async def _report_rejected(
        self, conn: asyncpg.Connection, page: int | None, rejected: list[items.Rejected]
    ) -> None:
        log.warning(
            "job %s: %d customers of page %s are not synced: %s",
            self.request.job_id,
            len(rejected),
            page,
            rejected[0].error[:200],
        )
        await activity.record(
            conn,
            org_id=self.request.org_id,
            job_id=self.request.job_id,
            event="fetch.rejected",
            level="error",
            details={
                "page": page,
                "rejected": len(rejected),
                "lines": [{"woo_id": r.woo_id, "error": r.error} for r in rejected[:20]],
            },
        )


async def handle_sync_requested(request: SyncRequested, deps: FetcherDeps) -> None:
    """Fetch every page not yet fetched for this job. Returns normally when the job is settled
    for the fetcher (completed, failed, closed by someone else, or handed on to a fresh
    delivery); raises only for infrastructure errors (retry later), or :class:`Requeue` when
    the service stops mid-crawl."""
    if deps.stopping.is_set():
        raise Requeue("the fetcher is stopping")
    scope = for_org(deps.pool, request.org_id)
    stopped = await scope.fetchval(q.MARK_CRAWL_STOPPED, request.job_id, request.org_id)
    if stopped is not None:
        log.info("job %s is %s; nothing to fetch", request.job_id, stopped)
        await activity.record(
            scope,
            org_id=request.org_id,
            job_id=request.job_id,
            event="fetch.stopped",
            details={"state": stopped},
        )
        return
    row = await scope.fetchrow(q.SELECT_JOB_WITH_CONNECTION, request.job_id, request.org_id)
    if row is None:
        log.warning("job %s not found for its org; dropping the request", request.job_id)
        return
    if row["state"] in FINAL_JOB_STATES and request.reason != "retry":
        log.info("job %s is already %s; nothing to fetch", request.job_id, row["state"])
        return
    processed = await scope.fetchval(q.MARK_JOB_PROCESSING, request.job_id, request.org_id)
    if processed is None:  # final, or paused or cancelled since the check above
        await scope.fetchval(q.MARK_CRAWL_STOPPED, request.job_id, request.org_id)
        return
    log.info("job %s: reading its store (taken up %d times)", request.job_id, processed)
    await activity.record(
        scope,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.started",
        details={"process_count": processed},
    )
    deadline = asyncio.get_running_loop().time() + deps.slice_s
    job = _Job(request, row["batch_size"], deps, scope, deadline)
    recorded_pages = row["pages_total"]
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
        if row["kind"] == "preview":
            await _supervised(job, _preview(job, config, row))
            return
        crawl = _crawl(job, config, concurrency=row["concurrency"], recorded_pages=recorded_pages)
        with _in_backlog(job):
            pages = await _supervised(job, crawl)
        if row["include_guests"]:
            await _supervised(job, _crawl_guests(job, config))
        lines = await scope.fetchval(
            q.MARK_FETCH_DONE, request.job_id, pages, request.org_id, paging.proves(job.batch_size)
        )
    except (StoreError, StoreUrlError, UndecryptableSecret, CrawlFailed, OrdersIncomplete) as exc:
        await _fail(job, str(exc), "store failed")
        return
    except JobClosed:
        log.info("job %s became final while its store was read; crawl stopped", request.job_id)
        state = await scope.fetchval(q.MARK_CRAWL_STOPPED, request.job_id, request.org_id)
        await activity.record(
            scope,
            org_id=request.org_id,
            job_id=request.job_id,
            event="fetch.stopped",
            details={"state": state} if state else {},
        )
        return
    except JobPaused:
        state = await scope.fetchval(q.MARK_CRAWL_STOPPED, request.job_id, request.org_id)
        log.info("job %s was paused; crawl stopped (job now %s)", request.job_id, state)
        await activity.record(
            scope,
            org_id=request.org_id,
            job_id=request.job_id,
            event="fetch.paused",
            details={"state": state},
        )
        if state is None:
            # Resumed while this crawl finished its reads: the resume left the reading on to
            # it (it sends no sync.requested while a crawl runs), so it is handed on.
            now = await scope.fetchval(q.SELECT_JOB_STATE, request.job_id, request.org_id)
            if now in RUNNING_JOB_STATES:
                await _hand_on(job)
        return
    except SliceOver:
        await _hand_on(job)
        return
    except Requeue:
        raise
    except Exception as exc:
        if is_infrastructure_error(exc):
            raise
        log.exception("job %s: the crawl failed", request.job_id)
        cause = _first_leaf(exc)
        error = f"the fetcher failed reading this job: {type(cause).__name__}: {cause}"
        await _fail(job, error, "error")
        return
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


async def _crawl_guests(job: _Job, config: StoreConfig) -> None:
    """After the customers: the store's guest orders, read whole and proven complete
    (:mod:`services.fetcher.guests`), become one line and one published customer per guest
    (``shared.guests``), in one transaction; a guest that already has a line in this job (a
    redelivery after that commit) is not published again. Orders without a usable e-mail are
    skipped and reported (a warning in the activity log), never a failed job."""
    request = job.request
    per_page = job.batch_size

    async def read(offset: int) -> tuple[list[Any], int | None]:
        if job.pausing:
            raise JobPaused()
        started = time.monotonic()
        error: str | None = None
        try:
            result = await client.list_guest_orders(page=1, per_page=per_page, offset=offset)
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            if job.deps.observe_page is not None:
                job.deps.observe_page(request.connection_id, time.monotonic() - started, error)
        return result.customers, result.total

    async with job.deps.open_client(config, 1, None) as client:
        book = await read_guest_orders(
            read, per_page=per_page, max_orders=job.deps.max_store_customers
        )
    guests = book.customers()
    async with job.db.transaction() as conn:
        state = await conn.fetchval(q.SELECT_JOB_STATE, request.job_id, request.org_id)
        if state in FINAL_JOB_STATES:
            raise JobClosed()
        rows = await conn.fetch(
            q.INSERT_GUEST_LINES, request.job_id, request.org_id, [g["id"] for g in guests], "guest"
        )
        created = {r["woo_id"] for r in rows}
        new = [g for g in guests if g["id"] in created]
        for start in range(0, len(new), per_page):  # batches of the job's size, as pages are
            whole = CustomerBatch(
                job_id=request.job_id,
                org_id=request.org_id,
                connection_id=request.connection_id,
                customers=new[start : start + per_page],
            )
            batches, oversize = split_customer_batch(whole, job.deps.max_message_bytes)
            if oversize:
                unsendable = [
                    items.Rejected(
                        int(o.customer["id"]), f"rejected by the fetcher: {o.error}; not synced"
                    )
                    for o in oversize
                ]
                await job._fail_unsendable(conn, None, unsendable)
            for batch in batches:
                await job.deps.publish(batch)
        details: dict[str, Any] = {
            "orders": book.orders_read,
            "guests": len(guests),
            "published": len(new),
            "skipped_no_email": len(book.skipped),
        }
        if book.skipped:
            details["skipped_order_ids"] = book.skipped[:MAX_SKIPPED_SHOWN]
        if book.account_orders:
            details["account_orders_ignored"] = book.account_orders
        await activity.record(
            conn,
            org_id=request.org_id,
            job_id=request.job_id,
            event="fetch.guests",
            level="warning" if book.skipped else "info",
            details=details,
        )
        if not await conn.fetchval(q.TOUCH_JOB, request.job_id, request.org_id):
            raise JobClosed()
    log.info(
        "job %s: %d guests from %d orders (%d published, %d orders without an e-mail skipped)",
        request.job_id,
        len(guests),
        book.orders_read,
        len(new),
        len(book.skipped),
    )


async def _preview(job: _Job, config: StoreConfig, row: asyncpg.Record) -> None:
    """A preview job: read the whole store (``services.fetcher.preview_read``), compare it with
    the stored customers and keep the answer on the job; no line, page or customer is written."""
    request = job.request
    concurrency = row["concurrency"] or job.deps.default_concurrency
    try:
        async with job.deps.open_client(config, concurrency, None) as client:
            read = await read_store(
                client,
                per_page=job.batch_size,
                concurrency=concurrency,
                max_customers=job.deps.preview_max_customers,
            )
    except StoreTooLarge as exc:
        raise CrawlFailed(
            f"{exc}: more than a preview job reads ({job.deps.preview_max_customers:,}, "
            "WOOSYNC_PREVIEW_JOB_MAX_CUSTOMERS)"
        ) from None
    comparison = await compare_store(
        job.deps.pool,
        read,
        org_id=request.org_id,
        connection_id=request.connection_id,
        sample_size=row["preview_sample_size"] or 0,
    )
    result = preview_result(row["store_url"], request.connection_id, read, comparison, concurrency)
    await job.db.execute(
        q.FINISH_PREVIEW,
        request.job_id,
        request.org_id,
        result.model_dump(mode="json"),
        read.total,
        read.pages,
    )
    await activity.record(
        job.db,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.completed",
        details={"pages": read.pages, "kind": "preview", "counts": result.counts.model_dump()},
    )
    await job.deps.publish(
        FetchCompleted(job_id=request.job_id, org_id=request.org_id, pages=read.pages, customers=0)
    )


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _fail(job: _Job, error: str, what: str) -> None:
    request = job.request
    error = error[:ERROR_LIMIT]
    log.warning("job %s: %s: %s", request.job_id, what, error)
    await activity.record(
        job.db,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.failed",
        level="error",
        details={"error": error},
    )
    await job.deps.publish(FetchFailed(job_id=request.job_id, org_id=request.org_id, error=error))
    # Paused or cancelled meanwhile: the tracker leaves such a job alone, so this crawl says it
    # stopped (a resume then crawls again; a cancelled job frees its store).
    await job.db.fetchval(q.MARK_CRAWL_STOPPED, request.job_id, request.org_id)


async def _hand_on(job: _Job) -> None:
    """The slice is over: a fresh, confirmed sync.requested resumes the job from its recorded
    pages; this delivery is then acked."""
    request = job.request
    slice_s = job.deps.slice_s
    log.info("job %s: crawl slice of %gs over; handing the job on", request.job_id, slice_s)
    await activity.record(
        job.db,
        org_id=request.org_id,
        job_id=request.job_id,
        event="fetch.handed_on",
        details={"slice_s": job.deps.slice_s},
    )
    await job.deps.publish(
        SyncRequested(
            job_id=request.job_id, org_id=request.org_id, connection_id=request.connection_id
        )
    )


@contextmanager
def _in_backlog(job: _Job) -> Iterator[None]:
    """The crawl takes its share of the fetcher's backlog budget while it runs."""
    if job.deps.backlog is None:
        yield
        return
    with job.deps.backlog.crawl(job.request.job_id, job.db) as share:
        job.backlog = share
        try:
            yield
        finally:
            job.backlog = None


async def _supervised(job: _Job, work: Awaitable[T]) -> T:
    """``work``'s result, unless the service is asked to stop (Requeue) or the job becomes
    final (JobClosed) first: then ``work`` is cancelled at once, in-flight requests with it.

    Cancelling anywhere is safe: a page is marked fetched only after its customers are
    published and their lines inserted."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(job.deps.stopping.wait())
    watch = asyncio.ensure_future(_until_final(job))
    try:
        await asyncio.wait({task, stop, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        stop.cancel()
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task
    if watch.done() and not watch.cancelled():
        watch.result()  # the watcher's own error (the database): raised
        raise JobClosed()
    raise Requeue("the fetcher is stopping; the crawl resumes from its recorded pages")


async def _until_final(job: _Job) -> str | None:
    """Returns once the job is final (or gone); polls while the crawl runs. A paused job is
    marked so (no new request goes out) and watched on: cancelled while its last reads are in
    flight, it stops at once."""
    while True:
        await asyncio.sleep(job.deps.check_interval_s)
        state = await job.db.fetchval(q.SELECT_JOB_STATE, job.request.job_id, job.request.org_id)
        if state is None or state in FINAL_JOB_STATES:
            return state
        if state == JobState.PAUSED and not job.pausing:
            log.info("job %s was paused; its crawl takes no new page", job.request.job_id)
            job.pausing = True


async def _crawl(
    job: _Job,
    config: StoreConfig,
    *,
    concurrency: int | None,
    recorded_pages: int | None = None,
) -> int:
    """Fetch all pages with ``concurrency`` workers, or as many as the store sustains when it
    is None (and the fetcher has the stores' limits)."""
    limits = job.deps.store_limits
    if concurrency is not None or limits is None:
        workers = concurrency or job.deps.default_concurrency
        return await _crawl_with(job, config, workers, None, recorded_pages)
    async with limits.gate(store_identity(config.url)) as gate:
        # As many workers as the ceiling; the gate admits what the store sustains.
        return await _crawl_with(job, config, limits.ceiling, gate, recorded_pages)


async def _crawl_with(
    job: _Job,
    config: StoreConfig,
    concurrency: int,
    gate: RequestGate | None,
    recorded_pages: int | None,
) -> int:
    """Fetch all pages, prove none was missed; returns the number of pages the store had.

    ``recorded_pages`` is the page count an earlier crawl of the job recorded from its first
    page: with that page recorded, the crawl resumes (after a pause, a hand-on, a restart)
    without reading it again."""
    job_id, org_id = job.request.job_id, job.request.org_id
    async with job.deps.open_client(config, concurrency, gate) as client:
        fetched = {
            r["page"]: r for r in await job.db.fetch(q.SELECT_FETCHED_PAGES, job_id, org_id)
        }
        resumed = fetched.get(1)
        if recorded_pages is not None and resumed is not None and resumed["start_offset"] == 0:
            log.info("job %s: resuming its crawl from the recorded pages", job_id)
            windows = _recorded_windows(fetched, first=True)
            return await _read_rest(job, client, fetched, windows, recorded_pages, concurrency)
        first = await job.fetch(client, 1, 0)
        count = len(first.customers)
        if paging.short_page_contradicts(0, count, job.batch_size, first.total) and count:
            await _adapt_page_size(job, count)
        elif (
            first.total is None
            and 0 < count < job.batch_size
            and (await job.fetch(client, None, count)).customers
        ):
            # No total to compare with: a short first page is the whole store, or a cap; the
            # read past it told.
            await _adapt_page_size(job, count)
        if paging.short_page_contradicts(0, count, job.batch_size, first.total):
            raise CrawlFailed(
                f"the store answered no customer on its first page while reporting "
                f"{first.total:,} (X-WP-Total)"
            )
        window = await job.record(1, 0, first.customers)
        per_page = job.batch_size
        # Without X-WP-Total (a proxy may strip it) the tail loop below reads page by page.
        total_pages = paging.pages_for(first.total, per_page)
        await job.db.execute(q.RECORD_STORE_TOTALS, job_id, first.total, total_pages, org_id)
        fetched = {
            r["page"]: r for r in await job.db.fetch(q.SELECT_FETCHED_PAGES, job_id, org_id)
        }
        windows = [window] + _recorded_windows(fetched, first=False)
        # A store of one page: its only read is also the last one started.
        tail = first if total_pages == 1 else None
        return await _read_rest(job, client, fetched, windows, total_pages, concurrency, tail)


def _recorded_windows(fetched: dict[int, Any], *, first: bool) -> list[paging.Window]:
    """The windows of the recorded pages (with the first page's, or without: just read)."""
    return [
        paging.Window(r["start_offset"], r["customers"], r["first_id"], r["last_id"])
        for r in fetched.values()
        if r["start_offset"] is not None and (first or r["page"] > 1)
    ]


async def _read_rest(
    job: _Job,
    client: PageReader,
    fetched: dict[int, Any],
    windows: list[paging.Window],
    total_pages: int,
    concurrency: int,
    tail: Any | None = None,
) -> int:
    """Read the pages not yet recorded, then the tail and the gaps (see the module docstring).
    ``tail``: a read of the last page already made after every other page was started."""
    per_page = job.batch_size
    done = set(fetched)
    if tail is None and total_pages > 1:
        # The last page goes last, recorded or not: read after every other page was started.
        todo = chain((page for page in range(2, total_pages) if page not in done), [total_pages])
        tail = await _read_pages(job, client, todo, windows, concurrency, tail_page=total_pages)
    page, last_seen = total_pages, total_pages
    if tail is not None and job.ends_the_store(tail):
        await _close_gaps(job, client, windows, budget=GAP_READS_SPARE + 2 * last_seen)
        await _check_complete(job)
        return last_seen
    # The store grew while we read (or said nothing of its size): re-read the last page after
    # all others, go on to a short one, but never past what a store of the allowed size holds.
    limit = paging.max_pages(job.deps.max_store_customers, per_page)
    while True:
        if not await job.admit():
            raise JobPaused() if job.pausing else SliceOver()
        try:
            result, window = await job.read(client, page, paging.page_offset(page, per_page))
        finally:
            job.release()
        windows.append(window)
        if result.customers:
            last_seen = page
        if len(result.customers) < per_page:
            break
        page += 1
        if page > limit:
            raise CrawlFailed(
                f"the store kept answering full pages past {job.deps.max_store_customers:,} "
                "customers (WOOSYNC_MAX_STORE_CUSTOMERS); refusing to read further"
            )
        if job.sliced:
            raise SliceOver()

    await _close_gaps(job, client, windows, budget=GAP_READS_SPARE + 2 * last_seen)
    await _check_complete(job)
    return last_seen


async def _adapt_page_size(job: _Job, store_page_size: int) -> None:
    """The store answers at most ``store_page_size`` per page: read with that size."""
    asked = job.batch_size
    log.warning(
        "job %s: the store answers %d customers per page where %d were asked for; "
        "reading with its page size",
        job.request.job_id,
        store_page_size,
        asked,
    )
    async with job.db.transaction() as conn:
        await conn.execute(
            q.ADAPT_BATCH_SIZE, job.request.job_id, job.request.org_id, store_page_size
        )
        await activity.record(
            conn,
            org_id=job.request.org_id,
            job_id=job.request.job_id,
            event="fetch.page_size",
            level="warning",
            details={"asked": asked, "store_page_size": store_page_size},
        )
    job.batch_size = store_page_size


async def _read_pages(
    job: _Job,
    client: PageReader,
    todo: Iterator[int],
    windows: list[paging.Window],
    concurrency: int,
    *,
    tail_page: int | None = None,
) -> Any | None:
    """Read the pages ``todo`` yields with ``concurrency`` workers, each pulling the next page
    number when it is done with one: memory stays flat however many pages there are. Once the
    slice is over, workers take no new page; SliceOver is raised when pages were left. Once
    the job is paused, workers take no new page but finish their reads; then JobPaused.
    Returns the answer of ``tail_page``, when it was read."""
    per_page = job.batch_size
    left = False
    tail: Any | None = None

    async def worker() -> None:
        nonlocal left, tail
        while not job.pausing:
            # Room in the job's backlog first, then a page number: a page taken is read.
            if not await job.admit():
                left = job.sliced
                return
            try:
                if (page := next(todo, None)) is None:
                    return
                result, window = await job.read(client, page, paging.page_offset(page, per_page))
            finally:
                job.release()
            if page == tail_page:
                tail = result
            windows.append(window)
            if job.sliced:
                left = True
                return

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    except* (StoreError, CrawlFailed, JobClosed, JobPaused) as errors:
        raise errors.exceptions[0] from None
    if job.pausing:
        raise JobPaused()
    if left and next(todo, None) is not None:
        raise SliceOver()
    return tail


async def _check_complete(job: _Job) -> None:
    """A done job must hold every customer the store says it has."""
    if job.latest_total is None:
        return
    lines = await job.db.fetchval(q.COUNT_LINES, job.request.job_id, job.request.org_id)
    if lines < job.latest_total:
        # Its pages held other customers than their offsets promise: a retry reads them all
        # again (publishing only customers that have no line yet).
        await job.db.execute(q.FORGET_PAGES, job.request.job_id, job.request.org_id)
        raise CrawlFailed(
            f"the store reports {job.latest_total:,} customers (X-WP-Total) but its pages held "
            f"only {lines:,} distinct ones: it leaves customers out of its pages (a cache, or "
            "a plugin filtering users?); retry reads it again"
        )


async def _close_gaps(
    job: _Job, client: PageReader, windows: list[paging.Window], *, budget: int
) -> None:
    """Read around every spot where a customer may have slipped between two windows until the
    windows join (see :mod:`services.fetcher.paging`); at most ``budget`` reads, after which
    the job fails: a done job must be complete."""
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
            # No hand-on here: re-reads are not recorded as pages, so a next slice would start
            # the walk over. The budget bounds this phase instead.
    if gaps:
        await activity.record(
            job.db,
            org_id=job.request.org_id,
            job_id=job.request.job_id,
            event="fetch.unverified",
            level="error",
            details={"gaps": [[g.after, g.before] for g in gaps[:20]], "reads": reads},
        )
        raise CrawlFailed(
            f"the store changed faster than it could be read: after {reads} extra reads, no "
            f"page proves {gaps[0].describe()} complete ({len(gaps)} such spots); retry "
            "resumes the crawl"
        )
