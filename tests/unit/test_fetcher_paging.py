"""Overlapping windows over a store that changes between reads: the crawl's proof of completeness.

A model store (a sorted list of ids) is read window by window, in any order, while customers are
deleted and added between reads; the crawl then closes the gaps the way the fetcher does. Every
customer that existed from start to end must have been seen.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.fetcher import paging


def test_windows_overlap_and_cover_the_store() -> None:
    assert (paging.overlap(100), paging.stride(100)) == (5, 95)
    assert (paging.overlap(10), paging.overlap(2), paging.overlap(1)) == (1, 1, 0)
    assert paging.pages_for(None, 100) == paging.pages_for(0, 100) == 1
    assert paging.pages_for(100, 100) == 1
    assert paging.pages_for(101, 100) == 2
    assert paging.pages_for(2000, 100) == 21  # offsets 0, 95, ..., 1900
    assert paging.page_offset(21, 100) + 100 >= 2000 > paging.page_offset(20, 100) + 100


def test_only_overlapping_windows_prove_a_crawl_complete() -> None:
    # A crawl in windows of one customer cannot find gaps, so it may not mark deletions.
    assert not paging.proves(1)
    assert paging.find_gaps([paging.Window.of(5, [9], 1)], 1) == []  # nothing is checked
    assert all(paging.proves(n) for n in (2, 3, 20, 100))


def test_a_quiet_store_has_no_gaps_even_with_holes_in_its_ids() -> None:
    ids = [i * 3 for i in range(1, 40)]  # users deleted long ago leave holes
    per_page = 10
    windows = [
        paging.Window.of(offset, ids[offset : offset + per_page])
        for offset in range(0, len(ids), paging.stride(per_page))
    ]
    assert paging.find_gaps(windows, per_page) == []


def test_a_shift_between_two_reads_is_a_gap() -> None:
    per_page = 10
    first = paging.Window.of(0, range(1, 11))  # ids 1..10
    # Three customers of the first window deleted: the second window now starts at id 13.
    second = paging.Window.of(9, range(13, 23))
    gaps = paging.find_gaps([first, second], per_page)
    assert gaps[0] == paging.Gap(after=10, before=13, resume_offset=9)
    assert gaps[1].before == paging.HIGHEST  # a full last window does not prove the end


def test_a_short_window_reaches_the_end_and_offset_zero_the_start() -> None:
    assert paging.find_gaps([paging.Window.of(0, [5, 6, 7])], 10) == []
    assert paging.find_gaps([paging.Window.of(0, [])], 10) == []
    assert paging.find_gaps([paging.Window.of(9, [50, 51])], 10)[0].after == paging.LOWEST - 1


def crawl(
    initial: int, per_page: int, order: list[int], deletions: list[list[int]], additions: list[int]
) -> tuple[set[int], set[int], list[paging.Window]]:
    """The fetcher's crawl against a model store; returns (ids seen, ids that existed
    throughout, windows). ``deletions[i]`` are ranks deleted, ``additions[i]`` customers added,
    right after the i-th read."""
    store = list(range(1, initial + 1))
    next_id = initial + 1
    deleted: set[int] = set()
    seen: set[int] = set()
    windows: list[paging.Window] = []
    reads = 0

    def read(offset: int) -> paging.Window:
        nonlocal reads, next_id
        got = store[offset : offset + per_page]
        seen.update(got)
        window = paging.Window.of(offset, got)
        windows.append(window)
        for rank in deletions[reads] if reads < len(deletions) else []:
            if store:
                deleted.add(store.pop(rank % len(store)))
        for _ in range(additions[reads] if reads < len(additions) else 0):
            store.append(next_id)
            next_id += 1
        reads += 1
        return window

    pages = paging.pages_for(initial, per_page)
    read(0)
    for page in sorted(range(2, pages + 1), key=lambda p: order[p % len(order)] if order else p):
        read(paging.page_offset(page, per_page))
    page = pages
    while read(paging.page_offset(page, per_page)).count == per_page:
        page += 1
    budget = 4 + 2 * page
    spent = 0
    while (gaps := paging.find_gaps(windows, per_page)) and spent < budget:
        walk = paging.GapWalk(gaps[0], per_page)
        while not walk.done and spent < budget:
            offset = walk.offset
            walk.saw(read(offset))
            spent += 1
    throughout = set(range(1, initial + 1)) - deleted
    crawl.gave_up = spent >= budget  # type: ignore[attr-defined]
    return seen, throughout, windows


@settings(max_examples=300, deadline=None)
@given(
    initial=st.integers(0, 400),
    per_page=st.integers(2, 40),
    order=st.lists(st.integers(0, 1000), max_size=30),
    deletions=st.lists(st.lists(st.integers(0, 10_000), max_size=12), max_size=40),
    additions=st.lists(st.integers(0, 5), max_size=40),
)
def test_every_customer_that_existed_throughout_is_seen(
    initial: int,
    per_page: int,
    order: list[int],
    deletions: list[list[int]],
    additions: list[int],
) -> None:
    seen, throughout, windows = crawl(initial, per_page, order, deletions, additions)
    assert throughout <= seen
    gaps = paging.find_gaps(windows, per_page)
    # A store that grows faster than the walk reads (five added per read of two) cannot be
    # proven read within the walk's budget: the fetcher then fails the job, never "done". The
    # budget runs out only while customers are being added.
    assert gaps == [] or (crawl.gave_up and sum(additions) > 0)  # type: ignore[attr-defined]


def test_many_deletions_in_front_of_the_crawl_are_recovered() -> None:
    # After every read, the five lowest customers go: the crawl keeps falling behind.
    seen, throughout, windows = crawl(500, 20, [], [[0] * 5] * 30, [])
    assert throughout <= seen and paging.find_gaps(windows, 20) == []
