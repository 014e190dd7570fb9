"""The moves of pause, resume and cancel, by the table, and the 409 that names the state."""

from __future__ import annotations

import pytest

from services.api.actions.cancel import _count
from services.api.actions.common import not_allowed
from services.api.actions.pause import PAUSABLE
from shared.lifecycle import (
    FINAL_JOB_STATES,
    OPEN_JOB_STATES,
    RUNNING_JOB_STATES,
    Actor,
    JobState,
    LineState,
    allowed,
)

J, L = JobState, LineState


def test_pause_holds_only_a_running_job() -> None:
    assert set(PAUSABLE) == RUNNING_JOB_STATES
    for state in JobState:
        assert allowed(Actor.API_PAUSE, "job", state, J.PAUSED) == (
            state in RUNNING_JOB_STATES or state == J.PAUSED
        )


def test_resume_leaves_only_paused() -> None:
    for target in (J.QUEUED, J.PROCESSING):
        assert allowed(Actor.API_RESUME, "job", J.PAUSED, target)
        for state in set(JobState) - {J.PAUSED, target}:
            assert not allowed(Actor.API_RESUME, "job", state, target)


def test_cancel_ends_any_open_job_and_nothing_final() -> None:
    for state in OPEN_JOB_STATES:
        assert allowed(Actor.API_CANCEL, "job", state, J.CANCELLED)
    for state in FINAL_JOB_STATES - {J.CANCELLED}:
        assert not allowed(Actor.API_CANCEL, "job", state, J.CANCELLED)
    assert J.CANCELLED in FINAL_JOB_STATES and J.PAUSED in OPEN_JOB_STATES
    assert J.PAUSED not in RUNNING_JOB_STATES  # the tracker neither finishes nor stalls it


def test_only_open_lines_are_cancelled() -> None:
    # The api cancels every open line (a conflict waiting for a person too); the syncer only
    # the lines of a batch it was handed, which are on their way (never a waiting conflict).
    for actor, open_states in (
        (Actor.API_CANCEL, (L.PENDING, L.PROCESSING, L.CONFLICT)),
        (Actor.SYNCER, (L.PENDING, L.PROCESSING)),
    ):
        for state in LineState:
            expected = state in (*open_states, L.CANCELLED)
            assert allowed(actor, "line", state, L.CANCELLED) == expected
    # Nothing takes a cancelled line anywhere else.
    for actor in Actor:
        for target in set(LineState) - {L.CANCELLED}:
            assert not allowed(actor, "line", L.CANCELLED, target)


@pytest.mark.parametrize("state", [J.DONE, J.CANCELLED, J.DRAFT])
def test_the_conflict_names_the_state(state: JobState) -> None:
    error = not_allowed("pause", state, PAUSABLE)
    assert error.status == 409 and error.code == "action_not_allowed"
    assert f"the job is {state.value}" in error.message
    assert "queued or processing" in error.message


def test_command_tags_are_counted() -> None:
    assert (_count("UPDATE 12"), _count("DELETE 0")) == (12, 0)
