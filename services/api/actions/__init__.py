"""The api's actions, one module each, and the table that dispatches a request to its handler.

An action is a plain async function of its typed request, the caller and explicit deps; it
answers with a body and a status or raises :class:`~services.api.errors.ApiError`. The table
below is the one list of actions: the request validation (``ACTION_MODELS``), the dispatch and
the OpenAPI document's summaries all read it, so a new action is one module and one row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from services.api.actions import (
    cancel,
    conflicts,
    force_done,
    pause,
    replay,
    resume,
    retry,
    start,
    status,
)
from services.api.actions.common import Answer
from services.api.deps import Deps
from services.api.schemas import (
    ActionRequest,
    CancelRequest,
    ForceDoneRequest,
    PauseRequest,
    ReplayRequest,
    ResolveConflictsRequest,
    ResumeRequest,
    RetryRequest,
    StartRequest,
    StatusRequest,
)
from shared.auth import Caller
from shared.logs import log_context


@dataclass(frozen=True)
class Action:
    model: type[ActionRequest]
    handler: Callable[[Any, Caller, Deps], Awaitable[Answer]]
    summary: str  # one line for the OpenAPI document
    note: str = ""  # what the operation's description adds for this action


ACTIONS: dict[str, Action] = {
    "start": Action(StartRequest, start.answer, start.SUMMARY, start.NOTE),
    "status": Action(StatusRequest, status.answer, status.SUMMARY),
    "retry": Action(RetryRequest, retry.answer, retry.SUMMARY),
    "force-done": Action(ForceDoneRequest, force_done.answer, force_done.SUMMARY),
    "replay": Action(ReplayRequest, replay.answer, replay.SUMMARY),
    "pause": Action(PauseRequest, pause.answer, pause.SUMMARY),
    "resume": Action(ResumeRequest, resume.answer, resume.SUMMARY),
    "cancel": Action(CancelRequest, cancel.answer, cancel.SUMMARY),
    "resolve-conflicts": Action(
        ResolveConflictsRequest, conflicts.answer, conflicts.SUMMARY, conflicts.NOTE
    ),
}

ACTION_MODELS: dict[str, type[ActionRequest]] = {
    name: action.model for name, action in ACTIONS.items()
}


async def dispatch(request: ActionRequest, caller: Caller, deps: Deps) -> Answer:
    """Run the handler of the request's action; its log lines name the org and the job."""
    with log_context(org_id=caller.org_id, job_id=getattr(request, "job_id", None)):
        return await ACTIONS[request.action].handler(request, caller, deps)
