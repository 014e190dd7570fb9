"""The HTTP paths of woosync, defined once: routes are mounted at these and URLs given out from
them (``status_url``, ``progress_url``). Templates take ``job_id`` with ``str.format``."""

SYNC_PATH = "/api/v1/integrations/woocommerce/sync/customers"  # api: the actions
JOB_PATH = "/api/v1/integrations/woocommerce/sync/jobs/{job_id}"  # api: status_url
PROGRESS_PATH = "/api/v1/integrations/sync/progress/{job_id}"  # tracker: SSE, progress_url
PROGRESS_PAGE_PATH = "/progress/{job_id}"  # tracker: a progress bar fed by PROGRESS_PATH
