"""Reading a whole store for a preview, the way the fetcher reads it, with nothing recorded.

The same windows (``services.fetcher.paging``: ``orderby=id&order=asc``, overlapping offsets,
``concurrency`` workers pulling page numbers, the tail re-read while the store grows, re-reads
around any spot a deletion may have hidden) and the same checks of the store's word
(``services.fetcher.items``), but held in memory: a preview writes no line, page or customer.
Where the fetcher fails a job, the preview says the read is not *complete* and why, because a
preview still answers with what it saw; it then counts no deletions (a customer missing from an
incomplete read may only have been missed).

Each request's duration is kept: the preview's estimate of a sync's reading time is made from it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.fetcher import items, paging

# Extra reads allowed to close gaps, beyond two per page of the store (as the fetcher).
GAP_READS_SPARE = 4


class PageReader(Protocol):
    async def list_customers(
        self, page: int, per_page: int, *, offset: int | None = None
    ) -> Any: ...


class StoreTooLarge(Exception):
    """The store holds (or claims, or grew to) more customers than a preview may read."""


@dataclass
class StoreRead:
    """What a preview read: the customers by id (the latest version seen) and its proof."""

    per_page: int
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)  # synthetic id -> why
    windows: list[paging.Window] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # one per request
    total: int | None = None  # the latest X-WP-Total the store sent
    pages: int = 1  # windows a sync reads over this store (the last non-empty one)
    problems: list[str] = field(default_factory=list)  # why the read is not proven complete

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def requests(self) -> int:
        return len(self.latencies_s)


async def read_store(
    client: PageReader, *, per_page: int, concurrency: int, max_customers: int
) -> StoreRead:
    """Every customer of the store, read as a sync would read it; see the module docstring.

    Raises :class:`StoreTooLarge` when the store claims or grows past ``max_customers``, and
    the client's ``StoreError`` when the store fails a request."""
    read = StoreRead(per_page)
    first = await _fetch(client, read, 1, 0, max_customers)
    count = len(first.customers)
    if paging.short_page_contradicts(0, count, per_page, first.total) and count:
        read.per_page = per_page = count  # the store caps its page size: read with its size
    elif paging.short_page_contradicts(0, count, per_page, first.total):
        read.problems.append(
            f"the store answered no customer on its first page while reporting {first.total:,}"
        )
        return read
    total_pages = paging.pages_for(first.total, per_page)
    todo = iter(range(2, total_pages + 1))
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(_worker(client, read, todo, max_customers))
    except* Exception as errors:  # the first worker's failure, as a sequential read raises it
        raise errors.exceptions[0] from None

    page, last_seen = total_pages, 1 if count else 0
    limit = paging.max_pages(max_customers, per_page)
    while True:  # the store may have grown meanwhile: on to a short page
        result = await _fetch(client, read, page, paging.page_offset(page, per_page), max_customers)
        if result.customers:
            last_seen = page
        if len(result.customers) < per_page:
            break
        page += 1
        if page > limit:
            raise StoreTooLarge(
                f"the store kept answering full pages past {max_customers:,} customers"
            )
    read.pages = max(last_seen, 1)
    await _close_gaps(client, read, budget=GAP_READS_SPARE + 2 * read.pages, limit=max_customers)
    seen = len(read.customers) + len(read.rejected)
    if read.total is not None and seen < read.total:
        read.problems.append(
            f"the store reports {read.total:,} customers (X-WP-Total) but its pages held only "
            f"{seen:,} distinct ones"
        )
    return read


async def _worker(
    client: PageReader, read: StoreRead, todo: Iterator[int], max_customers: int
) -> None:
    for page in todo:
        await _fetch(client, read, page, paging.page_offset(page, read.per_page), max_customers)


async def _fetch(
    client: PageReader, read: StoreRead, page: int | None, offset: int, max_customers: int
) -> Any:
    """One window: timed, checked, its customers kept and its bounds added to the proof."""
    started = time.perf_counter()
    result = await client.list_customers(page=page or 1, per_page=read.per_page, offset=offset)
    read.latencies_s.append(time.perf_counter() - started)
    if result.total is not None and result.total > max_customers:
        raise StoreTooLarge(f"the store reports {result.total:,} customers (X-WP-Total)")
    if result.total is not None:
        read.total = result.total
    customers, rejected = items.split(result.customers)
    ids = [c["id"] for c in customers]
    if not items.is_ascending(ids):
        read.problems.append(
            f"the customers of the window at offset {offset} are not in ascending id order"
        )
    for customer in customers:
        read.customers[customer["id"]] = customer
    for item in rejected:
        read.rejected[item.woo_id] = item.error
    window = paging.Window.of(offset, ids, count=len(result.customers))
    read.windows.append(window)
    return result


async def _close_gaps(client: PageReader, read: StoreRead, *, budget: int, limit: int) -> None:
    """Read around every spot no window proves complete (``paging.GapWalk``), within budget."""
    reads = 0
    while (gaps := paging.find_gaps(read.windows, read.per_page)) and reads < budget:
        walk = paging.GapWalk(gaps[0], read.per_page)
        while not walk.done and reads < budget:
            await _fetch(client, read, None, walk.offset, limit)
            reads += 1
            walk.saw(read.windows[-1])
    if gaps:
        read.problems.append(
            f"the store changed faster than it could be read: no window proves "
            f"{gaps[0].describe()} complete"
        )


def estimate_s(read: StoreRead, concurrency: int) -> tuple[float, float]:
    """The median request latency, and the time a sync's reading of ``read.pages`` windows
    takes at ``concurrency`` requests at once: rounds of ``concurrency`` pages, one latency each
    (page 1 alone first, as the fetcher reads it; the last page in the last round, read again
    only when the store grows meanwhile)."""
    latencies = sorted(read.latencies_s)
    if not latencies:
        return 0.0, 0.0
    middle = len(latencies) // 2
    median = (
        latencies[middle] if len(latencies) % 2 else (latencies[middle - 1] + latencies[middle]) / 2
    )
    rest = max(read.pages - 1, 0)
    rounds = 1 + -(-rest // concurrency)  # page 1, then the others (the last page among them)
    return median, median * rounds
