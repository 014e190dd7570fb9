"""The api's ``replay`` action: send one job's parked customers back to the syncer.

The work is :func:`shared.replay.replay_job_from_lines`, under the caller's org: the job's failed
lines keep the customers the syncer parked, so the replay reads them from PostgreSQL and never
opens the shared parking queue, whose other orgs' messages it must neither read, hold nor delay.
A job of another org is answered like a missing one. The parked copies stay for the operator's
``woosync dlq`` (replaying them again is harmless).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.api.actions.common import Answer, job_not_found, read_status
from services.api.deps import Deps
from services.api.publishing import publish_all
from services.api.schemas import ReplayRequest, StatusResult
from shared import replay as dlq
from shared.auth import Caller
from shared.messages import CustomerBatch

SUMMARY = "Send the job's parked customers back to the syncer (from its failed lines)."

# Answer within a client's patience; publishing is what can take time (confirms).
PUBLISH_TIMEOUT_S = 20.0


class ReplayResult(StatusResult):
    replayed: int  # batches sent back to the syncer
    customers: int  # customers in those batches
    lines_reopened: int  # failed lines made pending again
    job_reopened: bool  # the job went from failed back to processing

    @property
    def changed_anything(self) -> bool:
        return self.replayed > 0 or self.job_reopened


async def answer(request: ReplayRequest, caller: Caller, deps: Deps) -> Answer:
    replayed = await replay_job(request, caller, deps)
    return Answer(replayed, 202 if replayed.changed_anything else 200)


async def replay_job(request: ReplayRequest, caller: Caller, deps: Deps) -> ReplayResult:
    """Replay the job's parked customers; nothing parked is not an error (``replayed == 0``)."""
    org_id, job_id = caller.org_id, request.job_id

    async def send(batches: Sequence[CustomerBatch]) -> None:
        # Not known to be queued on a failure (503): the lines keep their payload.
        await publish_all(
            deps, batches, timeout_s=PUBLISH_TIMEOUT_S, context=f"replay of job {job_id}: publish"
        )

    report = await dlq.replay_job_from_lines(
        deps.pool,
        send,
        org_id=org_id,
        job_id=job_id,
        work_queue=deps.topology.syncer_queue.name,
        actor=caller.actor(),
    )
    if report is None:
        raise job_not_found()
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return ReplayResult(
        **status.model_dump(),
        replayed=report.replayed,
        customers=report.customers,
        lines_reopened=report.lines_reopened,
        job_reopened=job_id in report.jobs_reopened,
    )
