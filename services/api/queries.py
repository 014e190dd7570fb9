"""SQL of the api. Every query that touches a job is scoped by ``org_id`` as well as its id."""

from __future__ import annotations

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

# No row back means the idempotency key is taken, or the connection has a job reading its
# store (migration 0002's unique index): the caller then loads that job instead. Under
# LOCK_ORG_SYNCS neither can happen; this is the database's own guarantee behind it.
INSERT_JOB = changes_state(
    "api.INSERT_JOB",
    "job",
    {Actor.API_START: moves((None,), (JobState.DRAFT,))},
    f"""
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, idempotency_key, batch_size, concurrency, store_total)
VALUES ($1, $2, $3, {sql_state(JobState.DRAFT)}, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING id
""",
)

# A start's own conflict policy for its new job (null: the connection's, shared.conflicts).
SET_JOB_CONFLICT_POLICY = """
UPDATE woo_customer_sync_queue SET conflict_policy = $3 WHERE id = $1 AND org_id = $2
"""

# Serialises what makes an org's jobs open (start, and a retry of a finished job) until the
# transaction ends, so that counting open jobs and adding one cannot interleave. The two-key
# form has its own key space, apart from the migrator's single-key lock.
LOCK_ORG_SYNCS = "SELECT pg_advisory_xact_lock(7428103, hashtext($1::uuid::text))"

# The oldest open job of a connection: a second start answers with it.
SELECT_OPEN_JOB_OF_CONNECTION = f"""
SELECT id, connection_id, state
FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2 AND state IN {sql_in(OPEN_JOB_STATES)}
ORDER BY created_at
LIMIT 1
"""

COUNT_OPEN_JOBS = f"""
SELECT count(*) FROM woo_customer_sync_queue
WHERE org_id = $1 AND state IN {sql_in(OPEN_JOB_STATES)}
"""

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

# Held while sync.requested is published, so a draft is handed to the fetcher once.
LOCK_JOB_STATE = """
SELECT state FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR UPDATE
"""

# The job is locked (LOCK_JOB_STATE) and a draft: the fetcher cannot have taken it further.
MARK_QUEUED = changes_state(
    "api.MARK_QUEUED",
    "job",
    {
        Actor.API_START: moves((JobState.DRAFT,), (JobState.QUEUED,)),
        Actor.API_RETRY: moves((JobState.DRAFT,), (JobState.QUEUED,)),
    },
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.QUEUED)}, queued_at = now(), updated_at = now()
WHERE id = $1 AND org_id = $2 AND state = {sql_state(JobState.DRAFT)}
""",
)

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


# Conflicts (services.api.actions.conflicts). $1 job id, $2 org id, $3 one woo_id or null (all):
# the lines waiting as conflicts, locked in woo_id order (the syncer's order) until the
# resolution commits, so two resolutions of one line cannot both take it.
LOCK_CONFLICT_LINES = f"""
SELECT woo_id, payload
FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.CONFLICT)}
  AND ($3::bigint IS NULL OR woo_id = $3)
ORDER BY woo_id
FOR UPDATE
"""

# $1 job id, $2 org id, $3 bigint[] woo_ids (locked above), $4 the done line's warning.
RESOLVE_CONFLICT_LINES = changes_state(
    "api.RESOLVE_CONFLICT_LINES",
    "line",
    {Actor.API_RESOLVE: moves((LineState.CONFLICT,), (LineState.DONE,))},
    f"""
UPDATE woo_customer_sync_queue_line
SET state = {sql_state(LineState.DONE)}, warning = $4, last_error = NULL, payload = NULL,
    mantis_version = NULL, updated_at = now()
WHERE job_id = $1 AND org_id = $2 AND woo_id = ANY($3::bigint[])
  AND state = {sql_state(LineState.CONFLICT)}
""",
)

# $1 job id, $2 org id: the job's waiting conflicts; no row (None) when the job is not the org's.
COUNT_CONFLICT_LINES = f"""
SELECT (SELECT count(*) FROM woo_customer_sync_queue_line l
        WHERE l.job_id = j.id AND l.org_id = j.org_id
          AND l.state = {sql_state(LineState.CONFLICT)})
FROM woo_customer_sync_queue j
WHERE j.id = $1 AND j.org_id = $2
"""

# $1 job id, $2 org id, $3 the last woo_id of the previous page (0: from the start), $4 limit.
SELECT_CONFLICT_LINES = f"""
SELECT job_id, woo_id, payload, mantis_version, updated_at
FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = {sql_state(LineState.CONFLICT)} AND woo_id > $3
ORDER BY woo_id
LIMIT $4
"""
