"""The fetcher's backlog bound (services.fetcher.backlog): a share of the budget, and a floor."""

from __future__ import annotations

from services.fetcher.backlog import (
    FIRST_POLL_S,
    FLOOR_PAGES,
    MIN_POLL_S,
    poll_delay,
    share,
)


def test_one_crawl_alone_may_use_the_whole_budget() -> None:
    assert share(5000, 1, 100) == 5000


def test_the_budget_is_divided_among_the_running_crawls() -> None:
    assert share(5000, 10, 100) == 500
    assert share(5000, 4, 50) == 1250


def test_a_crawl_may_always_run_its_floor_of_pages_ahead() -> None:
    assert share(5000, 100, 100) == FLOOR_PAGES * 100
    assert share(0, 1, 100) == FLOOR_PAGES * 100
    assert share(300, 1, 100) == 300


def test_no_crawl_counts_as_one() -> None:
    assert share(5000, 0, 100) == 5000


def test_the_wait_follows_the_jobs_drain_rate_within_bounds() -> None:
    assert poll_delay(100, 200.0, 1.0) == 0.5  # 100 customers to settle at 200/s
    assert poll_delay(100, 100_000.0, 1.0) == MIN_POLL_S  # never a busy loop
    assert poll_delay(10_000, 1.0, 1.0) == 1.0  # never longer than the longest wait
    assert poll_delay(100, None, 1.0) == FIRST_POLL_S  # no rate known yet
    assert poll_delay(100, 0.0, 1.0) == FIRST_POLL_S
    # Nothing settles: each wait twice the previous, up to the longest.
    assert poll_delay(100, 0.0, 1.0, FIRST_POLL_S) == 2 * FIRST_POLL_S
    assert poll_delay(100, 0.0, 1.0, 0.8) == 1.0
