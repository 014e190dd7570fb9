"""SQL of the api. Every query that touches a job is scoped by ``org_id`` as well as its id."""

from __future__ import annotations

from shared import syncstart
from shared.lifecycle import (
    FINAL_JOB_STATES,
    OPEN_JOB_STATES,
    Actor,
    JobState,
    LineState,
    changes_state,
    moves,
    sql_in,
    sql_state,
)

# A store (the org and its URL without the scheme, shared.storeurl) has one connection whatever
# key, auth mode or scheme reaches it (migration 0009). What the store's connection holds before
# a start changes it (for the audit trail), locked until the transaction ends.
SELECT_CONNECTION_OF_STORE = """
SELECT id, store_url, auth_mode, verify_tls, consumer_key
FROM woo_connections
WHERE org_id = $1 AND store_identity = regexp_replace($2::text, '^[^:/]*://', '')
FOR UPDATE
"""

# Called only after the store accepted these credentials: they replace the stored ones.
UPSERT_CONNECTION = """
INSERT INTO woo_connections AS c
    (id, org_id, store_url, auth_mode, verify_tls, consumer_key, consumer_secret_enc)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (org_id, store_identity) DO UPDATE
SET store_url = EXCLUDED.store_url,
    auth_mode = EXCLUDED.auth_mode,
    verify_tls = EXCLUDED.verify_tls,
    consumer_key = EXCLUDED.consumer_key,
    consumer_secret_enc = EXCLUDED.consumer_secret_enc,
    updated_at = now()
RETURNING c.id
"""

# Job creation and the hand-over to the fetcher are shared with the scheduler (shared.syncstart).
INSERT_JOB = syncstart.INSERT_JOB
LOCK_ORG_SYNCS = syncstart.LOCK_ORG_SYNCS
SELECT_OPEN_JOB_OF_CONNECTION = syncstart.SELECT_OPEN_JOB_OF_CONNECTION
COUNT_OPEN_JOBS = syncstart.COUNT_OPEN_JOBS

# Another job of the connection that has not read all its pages (holds migration 0002's slot).
SELECT_OTHER_FETCHING_JOB = f"""
SELECT id FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND id <> $3
  AND state IN {sql_in(OPEN_JOB_STATES)} AND fetch_done_at IS NULL
LIMIT 1
"""

SELECT_JOB_BY_IDEMPOTENCY_KEY = """
SELECT id, connection_id, state
FROM woo_customer_sync_queue
WHERE org_id = $1 AND idempotency_key = $2
"""

# Locks the job so that two retries, or a retry and a force-done, cannot interleave.
LOCK_JOB = """
SELECT id, connection_id, state, batch_size, fetch_done_at
FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2
FOR UPDATE
"""

# Failed lines whose raw customer was kept go back to pending; lines already pending with a
# payload are from an earlier retry whose batches may never have been published, so they are
# sent again too (the syncer's upsert makes a duplicate harmless). The outer SELECT reads the
# table as it was before the UPDATE, so no line is returned twice.
REQUEUE_FAILED_LINES = changes_state(
    "api.REQUEUE_FAILED_LINES",
    "line",
    {Actor.API_RETRY: moves((LineState.FAILED,), (LineState.PENDING,))},
    f"""
WITH requeued AS (
    UPDATE woo_customer_sync_queue_line
    SET state = {sql_state(LineState.PENDING)}, attempts = 0, last_error = NULL, updated_at = now()
    WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.FAILED)}
      AND payload IS NOT NULL
    RETURNING woo_id, payload
)
SELECT woo_id, payload FROM requeued
UNION ALL
SELECT woo_id, payload
FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.PENDING)}
  AND payload IS NOT NULL
ORDER BY woo_id
""",
)

COUNT_UNRECOVERABLE_LINES = f"""
SELECT count(*) FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.FAILED)} AND payload IS NULL
"""

FORCE_DONE = changes_state(
    "api.FORCE_DONE",
    "job",
    {Actor.API_FORCE_DONE: moves(OPEN_JOB_STATES, (JobState.DONE,))},
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.DONE)}, finished_at = now(), updated_at = now(), last_error = $2
WHERE id = $1 AND org_id = $3 AND state NOT IN {sql_in(FINAL_JOB_STATES)}
""",
)


# -- preview (read only: services.api.actions.preview) ------------------------------------------

# A stored connection and its key, to preview its store with what a sync would use.
SELECT_CONNECTION_FOR_PREVIEW = """
SELECT id, store_url, auth_mode, verify_tls, consumer_key, consumer_secret_enc
FROM woo_connections
WHERE org_id = $1 AND id = $2
"""

# The org's connection to a store, if it has one (no lock: a preview changes nothing).
SELECT_CONNECTION_ID_OF_STORE = """
SELECT id FROM woo_connections
WHERE org_id = $1 AND store_identity = regexp_replace($2::text, '^[^:/]*://', '')
"""

# A preview job (migration 0015): read by the fetcher like a sync, writing only its answer.
# $4 is the kind, 'preview' (a parameter: literals in state-changing SQL are read as states).
INSERT_PREVIEW_JOB = changes_state(
    "api.INSERT_PREVIEW_JOB",
    "job",
    {Actor.API_START: moves((None,), (JobState.DRAFT,))},
    f"""
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, kind, batch_size, concurrency, store_total,
     preview_sample_size)
VALUES ($1, $2, $3, {sql_state(JobState.DRAFT)}, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
RETURNING id
""",
)
