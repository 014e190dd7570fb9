"""The history routes' query strings and cursors: parsed strictly, opaque, tied to one list."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api.actions.history import encode_cursor, int_key, jobs_key, parse_query
from services.api.errors import ApiError
from services.api.schemas import JobsQuery, LinesQuery
from shared import activity
from shared.lifecycle import JobState, LineState
from woosync.jobs import stream_url


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_an_int_cursor_round_trips(key: int) -> None:
    assert int_key("lines", encode_cursor("lines", key)) == key


def test_a_jobs_cursor_round_trips_to_the_microsecond() -> None:
    at, job_id = datetime(2026, 12, 3, 11, 0, 0, 123456, tzinfo=UTC), uuid4()
    assert jobs_key(encode_cursor("jobs", [at.isoformat(), str(job_id)])) == (at, job_id)


@pytest.mark.parametrize(
    ("kind", "cursor"),
    [
        ("lines", "%%%"),
        ("lines", "bm90IGpzb24"),  # not JSON
        ("lines", encode_cursor("activity", 3)),  # another list's
        ("lines", encode_cursor("lines", -1)),
        ("lines", encode_cursor("lines", 2**63)),
        ("lines", encode_cursor("lines", "3")),
        ("lines", encode_cursor("lines", True)),
        ("jobs", encode_cursor("jobs", ["yesterday", str(uuid4())])),
        ("jobs", encode_cursor("jobs", ["2026-12-03T11:00:00", str(uuid4())])),  # naive
        ("jobs", encode_cursor("jobs", ["2026-12-03T11:00:00+00:00", "x"])),
        ("jobs", encode_cursor("jobs", 5)),
        ("jobs", encode_cursor("lines", 5)),
    ],
)
def test_a_foreign_or_forged_cursor_is_a_422_naming_it(kind: str, cursor: str) -> None:
    with pytest.raises(ApiError) as raised:
        jobs_key(cursor) if kind == "jobs" else int_key(kind, cursor)
    assert raised.value.status == 422 and raised.value.message.startswith("cursor:")


def test_query_states_come_from_the_lifecycle() -> None:
    for state in JobState:
        assert parse_query(JobsQuery, [("state", state.value)]).state == state
    for line_state in LineState:
        assert parse_query(LinesQuery, [("state", line_state.value)]).state == line_state
    assert parse_query(LinesQuery, []).state == LineState.FAILED


@pytest.mark.parametrize(
    ("items", "named"),
    [
        ([("limit", "0")], "limit"),
        ([("limit", "1"), ("limit", "2")], "limit"),
        ([("colour", "red")], "colour"),
        ([("state", "conflicting")], "state"),
    ],
)
def test_bad_queries_name_the_parameter(items: list[tuple[str, str]], named: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_query(JobsQuery, items)
    assert raised.value.status == 422 and raised.value.message.startswith(f"{named}:")


def test_watch_streams_from_the_progress_url_without_its_token() -> None:
    job = str(uuid4())
    progress = f"https://tracker.example/api/v1/integrations/sync/progress/{job}?token=secret"
    assert stream_url(progress, None, job) == progress.split("?")[0]
    assert stream_url(progress, "http://127.0.0.1:8001/", job) == (
        f"http://127.0.0.1:8001/api/v1/integrations/sync/progress/{job}"
    )


@pytest.mark.parametrize(
    ("event", "details", "by"),
    [
        ("job.queued", {"by": "api", "api_key_id": "k"}, "api"),
        ("job.failed", {"by": "migration 0009"}, "migration 0009"),
        ("job.failed", {"total": 3}, "tracker"),
        ("fetch.completed", {"pages": 2}, "fetcher"),
        ("dlq.replayed", {"by": "cli"}, "cli"),
        ("something.new", {}, None),
        ("something.new", {"by": 5}, None),
    ],
)
def test_who_did_it(event: str, details: dict[str, object], by: str | None) -> None:
    assert activity.who(event, details) == by
