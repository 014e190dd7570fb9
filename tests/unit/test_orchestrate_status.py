"""A parent job's status (its children's counts summed) and the orchestrate request's checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from services.api.schemas import OrchestrateRequest
from shared.jobs import JobStatus, parent_status

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def _status(**fields: Any) -> JobStatus:
    base: dict[str, Any] = dict(
        job_id=uuid4(),
        connection_id=uuid4(),
        state="processing",
        total=0,
        done=0,
        failed=0,
        conflicts=0,
        deleted=0,
        restored=0,
        pending=0,
        percent=0.0,
        store_total=None,
        pages_total=None,
        process_count=1,
        fetch_complete=False,
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        updated_at=NOW,
        last_error=None,
        conflict_policy="woo_wins",
    )
    return JobStatus(**(base | fields))


def test_a_parent_sums_its_children_and_lists_them() -> None:
    parent = _status(connection_id=None, kind="orchestration", process_count=0)
    children = [
        _status(
            total=100, done=100, fetch_complete=True, state="done", store_total=100, deleted=3
        ),
        _status(total=40, done=10, failed=5, conflicts=2, store_total=80, rate_per_s=2.5),
        _status(total=0, store_total=None, rate_per_s=1.5, restored=1),
    ]
    summed = parent_status(parent, children)
    assert (summed.total, summed.done, summed.failed, summed.conflicts) == (140, 110, 5, 2)
    assert (summed.deleted, summed.restored) == (3, 1)
    assert summed.pending == 140 - 115 - 2
    assert summed.percent == round(100 * 115 / 140, 2)
    assert summed.store_total == 180
    assert summed.fetch_complete is False
    assert summed.rate_per_s == 4.0
    assert summed.eta_s is None  # the third child's total is not known yet
    assert summed.children is not None
    assert [c.job_id for c in summed.children] == [c.job_id for c in children]
    assert [c.state for c in summed.children] == ["done", "processing", "processing"]
    assert summed.state == "processing" and summed.connection_id is None


def test_a_final_parent_has_no_rate_and_every_child_fetched_is_complete() -> None:
    parent = _status(connection_id=None, kind="orchestration", state="failed")
    children = [
        _status(total=3, done=3, fetch_complete=True, state="done"),
        _status(total=0, fetch_complete=True, state="failed", last_error="refused"),
    ]
    summed = parent_status(parent, children)
    assert summed.rate_per_s is None and summed.eta_s is None
    assert summed.fetch_complete is True and summed.percent == 100.0
    assert summed.children is not None and summed.children[1].last_error == "refused"


def _request(**fields: Any) -> OrchestrateRequest:
    return OrchestrateRequest.model_validate({"org_id": str(uuid4()), **fields})


def test_the_request_names_a_store_given_twice_and_wants_one_list() -> None:
    a, b = str(uuid4()), str(uuid4())
    with pytest.raises(ValidationError, match=f"connection {a} is named twice"):
        _request(connection_ids=[a, b, a])
    with pytest.raises(ValidationError, match="exactly one of"):
        _request(connection_ids=[a, b], connections=[{"connection_id": a}, {"connection_id": b}])
    with pytest.raises(ValidationError, match="exactly one of"):
        _request()
    with pytest.raises(ValidationError, match="at least 2"):
        _request(connection_ids=[a])
    with pytest.raises(ValidationError, match="named twice"):
        _request(connections=[{"connection_id": a}, {"connection_id": a}])


def test_a_stores_own_options_win_and_the_shared_ones_fill_in() -> None:
    a, b = str(uuid4()), str(uuid4())
    request = _request(
        connections=[
            {"connection_id": a, "options": {"batch_size": 5, "conflict_policy": "manual"}},
            {"connection_id": b},
        ],
        options={"batch_size": 50, "concurrency": 3, "idempotency_key": "k"},
    )
    first, second = request.targets()
    assert (first.options.batch_size, first.options.concurrency) == (5, 3)
    assert first.options.conflict_policy == "manual"
    assert (second.options.batch_size, second.options.concurrency) == (50, 3)
    assert second.options.conflict_policy is None
