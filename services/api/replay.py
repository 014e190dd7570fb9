"""The api's ``replay`` action: move one job's parked batches back to the syncer.

The work is :func:`shared.replay.replay`, the same as ``woosync dlq replay --job``, scoped to the
caller's org: a job of another org is answered like a missing one, and only messages naming both
the job and the org are moved. The broker connection is a short-lived one of its own (a parking
queue is read with ``basic.get`` and its messages held until the scan ends, which the api's
shared FastStream connection is not built for), and the whole replay is bounded in time.
"""

from __future__ import annotations

import logging

import aio_pika.exceptions

from services.api.actions import broker_unavailable, job_not_found, read_status
from services.api.deps import Deps
from services.api.schemas import ReplayRequest, StatusResult
from shared import replay as dlq
from shared.auth import Caller
from shared.db import for_org
from shared.jobs import get_status

log = logging.getLogger("woosync.api.replay")

# The broker is down, the parking queue is missing, a publish was refused, or time ran out.
BROKER_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    aio_pika.exceptions.AMQPError,
)

# Answer within a client's patience; a replay that needs longer is better run from the CLI.
REPLAY_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 5.0


class ReplayResult(StatusResult):
    replayed: int  # parked messages moved back to the syncer
    customers: int  # customers in those messages
    lines_reopened: int  # failed lines made pending again
    job_reopened: bool  # the job went from failed back to processing

    @property
    def changed_anything(self) -> bool:
        return self.replayed > 0 or self.job_reopened


async def replay_job(request: ReplayRequest, caller: Caller, deps: Deps) -> ReplayResult:
    """Replay the job's parked batches; nothing parked is not an error (``replayed == 0``)."""
    org_id, job_id = caller.org_id, request.job_id
    if await get_status(for_org(deps.pool, org_id), org_id=org_id, job_id=job_id) is None:
        raise job_not_found()
    try:
        connection = await dlq.open_connection(deps.settings.amqp_url, CONNECT_TIMEOUT_S)
        async with connection:
            report = await dlq.replay(
                connection,
                deps.pool,
                deps.topology,
                job_id=job_id,
                org_id=org_id,
                actor={"by": "api", "api_key_id": str(caller.key_id)},
                timeout_s=REPLAY_TIMEOUT_S,
            )
    except BROKER_FAILURES as exc:  # what moved is synced; repeating is safe
        log.warning("replay of job %s failed: %s", job_id, type(exc).__name__)
        raise broker_unavailable() from None
    status = await read_status(deps, org_id=org_id, job_id=job_id)
    return ReplayResult(
        **status.model_dump(),
        replayed=report.replayed,
        customers=report.customers,
        lines_reopened=report.lines_reopened,
        job_reopened=job_id in report.jobs_reopened,
    )
