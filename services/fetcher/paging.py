"""Offset windows over a store that changes while it is read, and the proof that none was missed.

WooCommerce pages by offset over ``orderby=id&order=asc``. A window read at offset ``o`` holds the
customers whose rank (their position in id order) was ``o .. o+n-1`` at that moment, so it holds
*every* customer that then existed with an id between its first and last id. New customers get
ids above every existing one, so they never move anyone; a deletion moves every later customer
one rank down. A customer that exists for the whole crawl therefore only ever moves down, and it
can slip past the crawl only by moving from an unread window into one already read.

Windows overlap by :func:`overlap` customers. The crawl proves that no customer slipped: the id
intervals of all windows read must join without a hole, two intervals joining when they share a
customer or touch. A window at offset 0 reaches down to the lowest id; a short window (fewer than
``n`` customers) reaches up to the highest. Where intervals do not join (more deletions than the
overlap between two reads), :func:`find_gaps` says where, and the fetcher reads the store around
that spot again until they do. Windows from an earlier fetcher's run count too (their bounds are
stored with the page), so a resumed crawl is proven the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LOWEST = 0  # below every id (WordPress user ids start at 1)
HIGHEST = 2**63 - 1  # above every id


def overlap(per_page: int) -> int:
    """Customers shared by two neighbouring windows: 5% of a page, at least one. A window of one
    customer cannot overlap, so such crawls are not proven (and ids are not checked)."""
    return 0 if per_page < 2 else max(1, per_page // 20)


def proves(per_page: int) -> bool:
    """Whether windows of ``per_page`` overlap, so that a crawl's completeness is proven."""
    return overlap(per_page) > 0


def stride(per_page: int) -> int:
    return per_page - overlap(per_page)


def page_offset(page: int, per_page: int) -> int:
    """Where page ``page`` (1-based) starts."""
    return (page - 1) * stride(per_page)


def short_page_contradicts(offset: int, count: int, per_page: int, total: int | None) -> bool:
    """A page with fewer than ``per_page`` items means "the store ends here", which its own
    ``X-WP-Total`` (sent with it) must confirm; a store that caps its page size does not."""
    return count < per_page and total is not None and total > offset + count


def max_pages(limit: int, per_page: int) -> int:
    """Windows a crawl may read in one pass over a store of at most ``limit`` customers, plus
    the one short page that ends it: the bound of the loop that follows a growing store."""
    return pages_for(limit, per_page) + 1


def pages_for(total: int | None, per_page: int) -> int:
    """Windows needed to cover ``total`` customers; 1 when the total is unknown."""
    if not total or total <= per_page:
        return 1
    step = stride(per_page)
    return 1 + -(-(total - per_page) // step)


@dataclass(frozen=True)
class Window:
    """One read: where it started, how many customers came back, their lowest and highest id."""

    offset: int
    count: int
    first_id: int | None
    last_id: int | None

    @classmethod
    def of(cls, offset: int, ids: Iterable[int], count: int | None = None) -> Window:
        """``count``: the items the store returned, when some had no usable id (they hold a
        rank all the same); the ids' bounds still prove what they prove."""
        seen = sorted(ids)
        first, last = (seen[0], seen[-1]) if seen else (None, None)
        return cls(offset, len(seen) if count is None else count, first, last)

    def span(self, per_page: int) -> tuple[int, int] | None:
        """The ids this window proves complete, or None (an empty window past the end)."""
        if self.count == 0 or self.first_id is None or self.last_id is None:
            return (LOWEST, HIGHEST) if self.offset == 0 else None
        low = LOWEST if self.offset == 0 else self.first_id
        high = HIGHEST if self.count < per_page else self.last_id
        return low, high


@dataclass(frozen=True)
class Gap:
    """Ids between ``after`` and ``before`` (both excluded) that no window proves complete.

    ``resume_offset`` is where the window after the one ending at ``after`` started (or would
    have): the first place to look again."""

    after: int
    before: int
    resume_offset: int

    def describe(self) -> str:
        low = "the lowest id" if self.after < LOWEST else f"id {self.after + 1}"
        high = "the highest" if self.before >= HIGHEST else f"id {self.before - 1}"
        return f"{low} to {high}"


def find_gaps(windows: Iterable[Window], per_page: int) -> list[Gap]:
    """Every hole in the union of the windows' spans, from the lowest id to the highest."""
    if per_page < 2:
        return []
    spans = sorted(
        (span, window.offset) for window in windows if (span := window.span(per_page))
    )
    gaps: list[Gap] = []
    reach, resume = LOWEST - 1, 0
    for (low, high), offset in spans:
        if low > reach + 1:
            gaps.append(Gap(reach, low, resume))
        if high > reach:
            reach, resume = high, offset + stride(per_page)
    if reach < HIGHEST:
        gaps.append(Gap(reach, HIGHEST, resume))
    return gaps


@dataclass
class GapWalk:
    """Where to read next to close one gap, given what each read returned.

    Reading forward from the gap's resume offset: a window that starts above the gap (customers
    moved down since) sends the walk one stride back; one that reaches into the gap extends the
    covered ids; the walk ends when the covered ids reach the far side or the end of the store.
    """

    gap: Gap
    per_page: int
    offset: int = -1
    covered: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.offset = self.gap.resume_offset
        self.covered = self.gap.after

    def saw(self, window: Window) -> None:
        step = stride(self.per_page)
        if window.count == 0 or window.first_id is None or window.last_id is None:
            # Past the end of a store that shrank: step back, or the store is empty.
            self.done = self.offset == 0
            self.offset = max(0, self.offset - step)
            return
        if self.offset > 0 and window.first_id > self.covered + 1:
            self.offset = max(0, self.offset - step)
            return
        high = HIGHEST if window.count < self.per_page else window.last_id
        self.covered = max(self.covered, high)
        self.done = self.covered + 1 >= self.gap.before
        self.offset += step
