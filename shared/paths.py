"""The HTTP paths of woosync, defined once: routes are mounted at these and URLs given out from
them (``status_url``, ``progress_url``). Templates take ``job_id`` with ``str.format``."""

from __future__ import annotations

from urllib.parse import quote
from uuid import UUID

SYNC_PATH = "/api/v1/integrations/woocommerce/sync/customers"  # api: the actions
JOBS_PATH = "/api/v1/integrations/woocommerce/sync/jobs"  # api: the org's jobs, newest first
JOB_PATH = JOBS_PATH + "/{job_id}"  # api: status_url
JOB_LINES_PATH = JOB_PATH + "/lines"  # api: a job's lines by state (failed by default)
JOB_ACTIVITY_PATH = JOB_PATH + "/activity"  # api: a job's activity log
CONNECTIONS_PATH = "/api/v1/integrations/woocommerce/connections"  # api: list
CONNECTION_PATH = "/api/v1/integrations/woocommerce/connections/{connection_id}"  # api: one
PREVIEW_PATH = "/api/v1/integrations/sync/preview"  # api: what a sync would change
# api: a store connection's schedule (a sub-resource of the connection), and the org's schedules
CONNECTION_PATH = "/api/v1/integrations/woocommerce/connections/{connection_id}"
SCHEDULE_PATH = CONNECTION_PATH + "/schedule"
SCHEDULES_PATH = "/api/v1/integrations/woocommerce/schedules"
ORCHESTRATE_PATH = "/api/v1/integrations/sync/orchestrate"  # api: one parent over several stores
CONFLICTS_PATH = JOB_PATH + "/conflicts"  # api: a job's conflicts waiting for a person
PROGRESS_PATH = "/api/v1/integrations/sync/progress/{job_id}"  # tracker: SSE, progress_url
PROGRESS_PAGE_PATH = "/progress/{job_id}"  # tracker: a progress bar fed by PROGRESS_PATH
# api: a store's webhook deliveries; the token names one webhook (no API key: the signature).
WEBHOOK_PATH = "/api/v1/integrations/woocommerce/webhooks/{token}"


def status_url(api_base: str, job_id: UUID) -> str:
    return api_base + JOB_PATH.format(job_id=job_id)


def progress_url(tracker_base: str, job_id: UUID, token: str) -> str:
    return tracker_base + PROGRESS_PATH.format(job_id=job_id) + "?token=" + quote(token, safe="")


def webhook_url(public_base: str, token: str) -> str:
    return public_base.rstrip("/") + WEBHOOK_PATH.format(token=quote(token, safe=""))
