"""The public paths of a job, spelled once: the api answers with them, the tracker serves one."""

from __future__ import annotations

from urllib.parse import quote
from uuid import UUID

# The api's route for one job's status (the ``status_url`` of a start).
JOB_PATH = "/api/v1/integrations/woocommerce/sync/jobs/{job_id}"
# The tracker's SSE route for one job's progress (the ``progress_url``).
PROGRESS_PATH = "/api/v1/integrations/sync/progress/{job_id}"


def status_url(api_base: str, job_id: UUID) -> str:
    return api_base + JOB_PATH.format(job_id=job_id)


def progress_url(tracker_base: str, job_id: UUID, token: str) -> str:
    return tracker_base + PROGRESS_PATH.format(job_id=job_id) + "?token=" + quote(token, safe="")
