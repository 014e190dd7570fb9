"""The links the api answers with: a job's ``status_url`` (here) and ``progress_url`` (tracker).

The paths themselves are spelled once, in :mod:`shared.paths`, which the tracker's routes use too.
"""

from __future__ import annotations

from uuid import UUID

from services.api.deps import Deps
from shared import paths


def status_url(deps: Deps, job_id: UUID) -> str:
    return paths.status_url(deps.settings.api_base(), job_id)


def progress_url(deps: Deps, job_id: UUID, org_id: UUID) -> str:
    token = deps.tokens.issue(job_id, org_id)
    return paths.progress_url(deps.settings.tracker_base(), job_id, token)
