"""Reading a store's guest orders completely, into a :class:`shared.guests.GuestBook`.

Orders are paged like customers (``orderby=id&order=asc`` in overlapping offset windows, see
:mod:`services.fetcher.paging`), and proven the same way: the windows' id intervals must join
without a hole (re-reads close a hole left by orders deleted mid-crawl), a short page must agree
with its own ``X-WP-Total``, ids must ascend, and the distinct orders read must reach the latest
``X-WP-Total``. A guest's row is built from all its orders, so guests are published only once the
whole orders crawl is proven: the crawl is not recorded page by page (a crawl stopped half-way,
by a pause, a restart or a failure, reads the orders again from the start).

The store is asked for ``customer=0`` (guest orders only), but each order's ``customer_id`` is
checked here too: a store that ignores the filter costs more reads, never a wrong guest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from services.fetcher import items, paging
from shared.guests import GuestBook, order_id

# (offset) -> (the page's items, the store's X-WP-Total or None)
ReadOrders = Callable[[int], Awaitable[tuple[list[Any], int | None]]]
GAP_READS_SPARE = 4


class OrdersIncomplete(Exception):
    """The store's orders cannot be read completely (or not proven so): the job fails."""


async def read_guest_orders(read: ReadOrders, *, per_page: int, max_orders: int) -> GuestBook:
    """Every guest order of the store, read and proven complete (see the module docstring)."""
    book = GuestBook()
    windows: list[paging.Window] = []
    latest_total: int | None = None
    limit = paging.max_pages(max_orders, per_page)
    page = 1
    while True:
        offset = paging.page_offset(page, per_page)
        window, total = await _read_window(read, book, offset, per_page, max_orders)
        windows.append(window)
        latest_total = total if total is not None else latest_total
        if window.count < per_page:
            break
        page += 1
        if page > limit:
            raise OrdersIncomplete(
                f"the store kept answering full pages of orders past {max_orders:,} "
                "(WOOSYNC_MAX_STORE_CUSTOMERS); refusing to read further"
            )
    reads, budget = 0, GAP_READS_SPARE + 2 * page
    while (gaps := paging.find_gaps(windows, per_page)) and reads < budget:
        walk = paging.GapWalk(gaps[0], per_page)
        while not walk.done and reads < budget:
            window, total = await _read_window(read, book, walk.offset, per_page, max_orders)
            latest_total = total if total is not None else latest_total
            reads += 1
            windows.append(window)
            walk.saw(window)
    if gaps:
        raise OrdersIncomplete(
            f"the store's orders changed faster than they could be read: after {reads} extra "
            f"reads, no page proves orders {gaps[0].describe()} complete; retry reads them again"
        )
    if latest_total is not None and book.orders_read < latest_total:
        raise OrdersIncomplete(
            f"the store reports {latest_total:,} guest orders (X-WP-Total) but its pages held "
            f"only {book.orders_read:,} distinct ones; retry reads them again"
        )
    return book


async def _read_window(
    read: ReadOrders, book: GuestBook, offset: int, per_page: int, max_orders: int
) -> tuple[paging.Window, int | None]:
    page_items, total = await read(offset)
    if total is not None and total > max_orders:
        raise OrdersIncomplete(
            f"the store claims {total:,} guest orders (X-WP-Total), above the limit of "
            f"{max_orders:,} (WOOSYNC_MAX_STORE_CUSTOMERS); refusing to read them"
        )
    count = len(page_items)
    if paging.short_page_contradicts(offset, count, per_page, total):
        raise OrdersIncomplete(
            f"the store answered {count} orders at offset {offset} where {per_page} were asked "
            f"for, while reporting {total:,} guest orders (X-WP-Total); the short page cannot "
            "end the crawl"
        )
    ids = [oid for item in page_items if (oid := order_id(item)) is not None]
    disorder = items.out_of_order(ids)
    if disorder is not None:
        raise OrdersIncomplete(
            f"the store does not return orders in ascending id order (offset {offset}: order "
            f"{disorder[1]} after order {disorder[0]}), although asked for orderby=id&order=asc"
        )
    for item in page_items:
        if order_id(item) is None:
            book.unusable.add(items.synthetic_id(item))  # holds a rank all the same
        else:
            book.add(item)
    return paging.Window.of(offset, ids, count=count), total
