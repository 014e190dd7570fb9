"""The ``status`` action: a job's counts, state and links."""

from __future__ import annotations

from services.api.actions.common import Answer, read_status
from services.api.deps import Deps
from services.api.schemas import StatusRequest
from shared.auth import Caller

SUMMARY = "A job's state, counts and links."


async def answer(request: StatusRequest, caller: Caller, deps: Deps) -> Answer:
    return Answer(await read_status(deps, org_id=caller.org_id, job_id=request.job_id))
