"""The rate and ETA of a job's status: customers settled over a recent window, and the time
left for the rest at that rate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from shared.jobs import MIN_RATE_SPAN_S, RATE_WINDOW_S, eta_s, rate_per_s, status_from_row


def test_rate_is_over_the_window_not_since_the_start() -> None:
    # An hour-old job that settled 60 customers in the last 30 s runs at 2/s, whatever its
    # average since the start.
    assert rate_per_s(60, age_s=3600.0, window_s=30.0) == 2.0


def test_a_young_job_is_measured_over_its_age() -> None:
    assert rate_per_s(20, age_s=10.0, window_s=30.0) == 2.0


def test_rate_is_unknown_for_a_final_job_or_within_its_first_second() -> None:
    assert rate_per_s(None, age_s=100.0) is None
    assert rate_per_s(5, age_s=None) is None
    assert rate_per_s(5, age_s=MIN_RATE_SPAN_S / 2) is None


def test_a_stalled_job_has_rate_zero_and_no_eta() -> None:
    rate = rate_per_s(0, age_s=600.0)
    assert rate == 0.0
    # Zero from its first moment: an idle job's status does not change as it ages (so its
    # progress stream sends no event for that alone).
    assert rate_per_s(0, age_s=MIN_RATE_SPAN_S / 2) == 0.0
    assert eta_s(100, rate, total_known=True) is None


@pytest.mark.parametrize(
    ("remaining", "rate", "expected"),
    [(100, 2.0, 50), (1, 3.0, 0), (0, 5.0, 0), (7, 0.5, 14), (10, 0.33, 30)],
)
def test_eta_is_the_remaining_lines_at_the_rate(remaining: int, rate: float, expected: int) -> None:
    assert eta_s(remaining, rate, total_known=True) == expected


def test_no_eta_while_the_total_is_unknown() -> None:
    assert eta_s(100, 2.0, total_known=False) is None
    assert eta_s(100, None, total_known=True) is None


def _row(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": uuid4(),
        "connection_id": uuid4(),
        "state": "processing",
        "total": 40,
        "done_count": 30,
        "failed_count": 10,
        "store_total": 100,
        "pages_total": None,
        "process_count": 1,
        "fetch_done_at": None,
        "created_at": now,
        "started_at": now,
        "finished_at": None,
        "updated_at": now,
        "last_error": None,
        "kind": "sync",
        "preview_result": None,
        "conflicts": 0,
        "conflict_policy": None,
        "deleted_count": 0,
        "restored_count": 0,
        "rate_per_s": 30 / RATE_WINDOW_S,  # as the tracker wrote it (services.tracker.rates)
    }
    return row | overrides


def test_status_uses_the_store_total_for_the_eta_until_every_page_is_read() -> None:
    status = status_from_row(_row())  # type: ignore[arg-type]
    assert status.pending == 60 and status.rate_per_s == 30 / RATE_WINDOW_S
    assert status.eta_s == 60


def test_status_without_a_store_total_before_the_fetch_ends_has_no_eta() -> None:
    status = status_from_row(_row(store_total=None))  # type: ignore[arg-type]
    assert status.rate_per_s == 1.0 and status.eta_s is None
    read = status_from_row(_row(store_total=None, fetch_done_at=datetime.now(UTC), total=50))  # type: ignore[arg-type]
    assert read.pending == 10 and read.eta_s == 10


def test_a_final_status_has_neither() -> None:
    status = status_from_row(_row(state="failed"))  # type: ignore[arg-type]
    assert status.rate_per_s is None and status.eta_s is None
