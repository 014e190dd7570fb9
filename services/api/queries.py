"""SQL of the api. Every query that touches a job is scoped by ``org_id`` as well as its id."""

from __future__ import annotations

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

# No row back means the idempotency key is taken, or the connection has a job reading its
# store (migration 0002's unique index): the caller then loads that job instead. Under
# LOCK_ORG_SYNCS neither can happen; this is the database's own guarantee behind it.
INSERT_JOB = """
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, idempotency_key, batch_size, concurrency, store_total)
VALUES ($1, $2, $3, 'draft', $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING id
"""

# Serialises what makes an org's jobs open (start, and a retry of a finished job) until the
# transaction ends, so that counting open jobs and adding one cannot interleave. The two-key
# form has its own key space, apart from the migrator's single-key lock.
LOCK_ORG_SYNCS = "SELECT pg_advisory_xact_lock(7428103, hashtext($1::uuid::text))"

# The oldest open job of a connection: a second start answers with it.
SELECT_OPEN_JOB_OF_CONNECTION = """
SELECT id, connection_id, state
FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND state IN ('draft', 'queued', 'processing')
ORDER BY created_at
LIMIT 1
"""

COUNT_OPEN_JOBS = """
SELECT count(*) FROM woo_customer_sync_queue
WHERE org_id = $1 AND state IN ('draft', 'queued', 'processing')
"""

# Another job of the connection that has not read all its pages (holds migration 0002's slot).
SELECT_OTHER_FETCHING_JOB = """
SELECT id FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND id <> $3
  AND state IN ('draft', 'queued', 'processing') AND fetch_done_at IS NULL
LIMIT 1
"""

SELECT_JOB_BY_IDEMPOTENCY_KEY = """
SELECT id, connection_id, state
FROM woo_customer_sync_queue
WHERE org_id = $1 AND idempotency_key = $2
"""

# Held while sync.requested is published, so a draft is handed to the fetcher once.
LOCK_JOB_STATE = """
SELECT state FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR UPDATE
"""

# The job is locked (LOCK_JOB_STATE) and a draft: the fetcher cannot have taken it further.
MARK_QUEUED = """
UPDATE woo_customer_sync_queue
SET state = 'queued', queued_at = now(), updated_at = now()
WHERE id = $1 AND org_id = $2 AND state = 'draft'
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
REQUEUE_FAILED_LINES = """
WITH requeued AS (
    UPDATE woo_customer_sync_queue_line
    SET state = 'pending', attempts = 0, last_error = NULL, updated_at = now()
    WHERE job_id = $1 AND org_id = $2 AND state = 'failed' AND payload IS NOT NULL
    RETURNING woo_id, payload
)
SELECT woo_id, payload FROM requeued
UNION ALL
SELECT woo_id, payload
FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = 'pending' AND payload IS NOT NULL
ORDER BY woo_id
"""

COUNT_UNRECOVERABLE_LINES = """
SELECT count(*) FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = 'failed' AND payload IS NULL
"""

# Counts are recomputed from the lines (as the tracker does), so the status answered right
# after a retry no longer shows the re-queued lines as failed.
RESUME_JOB = """
UPDATE woo_customer_sync_queue AS j
SET state = $2,
    finished_at = NULL,
    last_error = NULL,
    updated_at = now(),
    done_count = c.done,
    failed_count = c.failed
FROM (
    SELECT count(*) FILTER (WHERE state = 'done') AS done,
           count(*) FILTER (WHERE state = 'failed') AS failed
    FROM woo_customer_sync_queue_line
    WHERE job_id = $1 AND org_id = $3
) AS c
WHERE j.id = $1 AND j.org_id = $3
"""

FORCE_DONE = """
UPDATE woo_customer_sync_queue
SET state = 'done', finished_at = now(), updated_at = now(), last_error = $2
WHERE id = $1 AND org_id = $3 AND state NOT IN ('done', 'failed')
"""

