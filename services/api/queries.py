"""SQL of the api. Every query that touches a job is scoped by ``org_id`` as well as its id."""

from __future__ import annotations

from shared import syncstart
from shared.lifecycle import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    OPEN_JOB_STATES,
    OPEN_LINE_STATES,
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
SET_JOB_CONFLICT_POLICY = syncstart.SET_JOB_CONFLICT_POLICY
SET_JOB_INCLUDE_GUESTS = syncstart.SET_JOB_INCLUDE_GUESTS

SELECT_OTHER_FETCHING_JOB = syncstart.SELECT_OTHER_FETCHING_JOB

SELECT_JOB_BY_IDEMPOTENCY_KEY = """
SELECT id, connection_id, state
FROM woo_customer_sync_queue
WHERE org_id = $1 AND idempotency_key = $2
"""

# Locks the job so that two retries, or a retry and a force-done, cannot interleave.
LOCK_JOB = """
SELECT id, connection_id, state, batch_size, fetch_done_at, kind
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
    {Actor.API_FORCE_DONE: moves(ACTIVE_JOB_STATES, (JobState.DONE,))},
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.DONE)}, finished_at = now(), updated_at = now(), last_error = $2
WHERE id = $1 AND org_id = $3 AND state IN {sql_in(ACTIVE_JOB_STATES)}
""",
)


# --- store connections (services/api/actions/connections.py) ----------------------------------

# A connection as its org sees it (never the secret): the key's ending, its customers (stored,
# and marked deleted), its open job and its latest job. $1 org id, then the filter's parameters.
_CONNECTION_VIEW = f"""
SELECT c.id, c.store_url, c.store_identity, c.auth_mode, c.verify_tls,
       right(c.consumer_key, 4) AS consumer_key_ending,
       length(c.consumer_secret_enc) > 0 AS has_secret,
       c.created_at, c.updated_at,
       counts.customers, counts.customers_deleted,
       (SELECT j.id FROM woo_customer_sync_queue j
        WHERE j.org_id = c.org_id AND j.connection_id = c.id
          AND j.state IN {sql_in(OPEN_JOB_STATES)}
        ORDER BY j.created_at LIMIT 1) AS open_job_id,
       (SELECT j.id FROM woo_customer_sync_queue j
        WHERE j.org_id = c.org_id AND j.connection_id = c.id
        ORDER BY j.created_at DESC, j.id DESC LIMIT 1) AS last_job_id
FROM woo_connections c
CROSS JOIN LATERAL (
    SELECT (count(*) FILTER (WHERE cu.deleted_at IS NULL))::int AS customers,
           (count(*) FILTER (WHERE cu.deleted_at IS NOT NULL))::int AS customers_deleted
    FROM customer cu
    WHERE cu.org_id = c.org_id AND cu.connection_id = c.id
) AS counts
"""

# A page of the org's connections in the order of their store ($2: the last store of the
# previous page, or null; $3: how many).
LIST_CONNECTIONS = (
    _CONNECTION_VIEW
    + """
WHERE c.org_id = $1 AND ($2::text IS NULL OR c.store_identity > $2::text)
ORDER BY c.store_identity
LIMIT $3
"""
)

SELECT_CONNECTION = _CONNECTION_VIEW + "WHERE c.org_id = $1 AND c.id = $2"

# The stored connection, locked until the transaction ends (an update, a delete).
LOCK_CONNECTION = """
SELECT id, store_url, auth_mode, verify_tls, consumer_key
FROM woo_connections
WHERE org_id = $1 AND id = $2
FOR UPDATE
"""

# Called only after the store accepted these credentials.
UPDATE_CONNECTION_CREDENTIALS = """
UPDATE woo_connections
SET auth_mode = $3, verify_tls = $4, consumer_key = $5, consumer_secret_enc = $6,
    updated_at = now()
WHERE org_id = $1 AND id = $2
"""

# A cancelled job of the connection whose crawl has not stopped yet (migration 0010).
SELECT_STOPPING_JOB_OF_CONNECTION = f"""
SELECT id FROM woo_customer_sync_queue
WHERE org_id = $1 AND connection_id = $2
  AND state = {sql_state(JobState.CANCELLED)} AND crawl_stopped_at IS NULL
LIMIT 1
"""

COUNT_CONNECTION_CUSTOMERS = """
SELECT count(*)::int FROM customer WHERE org_id = $1 AND connection_id = $2
"""

DELETE_CONNECTION_CUSTOMERS = """
WITH gone AS (
    DELETE FROM customer WHERE org_id = $1 AND connection_id = $2 RETURNING 1
)
SELECT count(*)::int FROM gone
"""

# Finished jobs only: an open one (which the caller refused under the org's sync lock) stays,
# and then the connection's own delete fails on the foreign key. Lines and pages go with them
# (ON DELETE CASCADE); their activity rows stay (append-only).
DELETE_CONNECTION_JOBS = f"""
WITH gone AS (
    DELETE FROM woo_customer_sync_queue
    WHERE org_id = $1 AND connection_id = $2 AND state IN {sql_in(FINAL_JOB_STATES)}
    RETURNING 1
)
SELECT count(*)::int FROM gone
"""

DELETE_CONNECTION = "DELETE FROM woo_connections WHERE org_id = $1 AND id = $2"


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
# --- pause, resume, cancel ------------------------------------------------------------------

# What the three actions decide on, the job locked: a pause or cancel then waits for a batch
# the syncer is writing (it holds KEY SHARE on the job), and no batch is written after it.
LOCK_JOB_FOR_CONTROL = """
SELECT id, connection_id, state, fetch_done_at, process_count, crawl_stopped_at, kind
FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2
FOR UPDATE
"""

PAUSE_JOB = changes_state(
    "api.PAUSE_JOB",
    "job",
    {Actor.API_PAUSE: moves((JobState.QUEUED, JobState.PROCESSING), (JobState.PAUSED,))},
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.PAUSED)}, updated_at = now()
WHERE id = $1 AND org_id = $2
  AND state IN {sql_in({JobState.QUEUED, JobState.PROCESSING})}
""",
)

# $3 the state it resumes in (queued: pages are left to read; processing: every page was read).
# updated_at restarts the tracker's stall timer: paused time is no stall. crawl_stopped_at is
# cleared: a crawl runs again, or its sync.requested is on its way, until the fetcher says so.
RESUME_JOB = changes_state(
    "api.RESUME_JOB",
    "job",
    {Actor.API_RESUME: moves((JobState.PAUSED,), (JobState.QUEUED, JobState.PROCESSING))},
    f"""
UPDATE woo_customer_sync_queue
SET state = $3::text, updated_at = now(), crawl_stopped_at = NULL,
    queued_at = CASE WHEN $3::text = {sql_state(JobState.QUEUED)} THEN now() ELSE queued_at END
WHERE id = $1 AND org_id = $2 AND state = {sql_state(JobState.PAUSED)}
""",
)

# The batches the syncer held while the job was paused, oldest first.
SELECT_HELD_BATCHES = """
SELECT id, attempt, batch FROM woo_customer_sync_hold
WHERE job_id = $1 AND org_id = $2
ORDER BY id
"""

DELETE_HELD_BATCHES = """
DELETE FROM woo_customer_sync_hold WHERE job_id = $1 AND org_id = $2
"""

# $3 the reason, $4 whether no crawl of the job can be running (it never began, every page was
# read, or a pause already stopped it): then its connection is free at once; otherwise the
# fetcher frees it when its crawl stops (services.fetcher.queries.MARK_CRAWL_STOPPED).
CANCEL_JOB = changes_state(
    "api.CANCEL_JOB",
    "job",
    {Actor.API_CANCEL: moves(OPEN_JOB_STATES, (JobState.CANCELLED,))},
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.CANCELLED)}, finished_at = now(), updated_at = now(),
    last_error = $3,
    crawl_stopped_at = CASE WHEN $4::boolean THEN coalesce(crawl_stopped_at, now())
                            ELSE crawl_stopped_at END
WHERE id = $1 AND org_id = $2 AND state IN {sql_in(OPEN_JOB_STATES)}
RETURNING crawl_stopped_at
""",
)

# The job's open lines are settled as cancelled; the counts are brought up to date.
CANCEL_LINES = changes_state(
    "api.CANCEL_LINES",
    "line",
    {Actor.API_CANCEL: moves(OPEN_LINE_STATES, (LineState.CANCELLED,))},
    f"""
UPDATE woo_customer_sync_queue_line
SET state = {sql_state(LineState.CANCELLED)}, updated_at = now()
WHERE job_id = $1 AND org_id = $2 AND state IN {sql_in(OPEN_LINE_STATES)}
""",
)

RECOUNT_JOB = f"""
UPDATE woo_customer_sync_queue j
SET total = c.total, done_count = c.done, failed_count = c.failed,
    conflict_count = c.conflicts
FROM (
    SELECT count(*)::int AS total,
           (count(*) FILTER (WHERE state = {sql_state(LineState.DONE)}))::int AS done,
           (count(*) FILTER (WHERE state = {sql_state(LineState.FAILED)}))::int AS failed,
           (count(*) FILTER (WHERE state = {sql_state(LineState.CONFLICT)}))::int AS conflicts
    FROM woo_customer_sync_queue_line WHERE job_id = $1 AND org_id = $2
) AS c
WHERE j.id = $1 AND j.org_id = $2
"""

# History (services.api.actions.history). Each is a keyset page: the caller asks for one row
# more than it shows, to know whether there is a next page; the cursor is the last row's key.

# $1 org, $2 state or NULL, $3 connection or NULL, $4/$5 the last row's (created_at, id) or
# NULL, $6 rows. Newest first; the id breaks ties of one created_at. The org index
# (org_id, created_at DESC) serves the order.
SELECT_JOBS_PAGE = """
SELECT j.id, j.connection_id, c.store_url, j.state, j.total, j.done_count, j.failed_count,
       j.store_total, j.fetch_done_at, j.created_at, j.started_at, j.finished_at, j.updated_at,
       j.last_error, j.kind, j.parent_id
FROM woo_customer_sync_queue j
-- A parent job (kind 'orchestration') has no connection: listed with no store.
LEFT JOIN woo_connections c ON c.id = j.connection_id AND c.org_id = j.org_id
WHERE j.org_id = $1
  AND ($2::text IS NULL OR j.state = $2::text)
  AND ($3::uuid IS NULL OR j.connection_id = $3::uuid)
  AND ($4::timestamptz IS NULL OR (j.created_at, j.id) < ($4::timestamptz, $5::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT $6
"""

JOB_EXISTS = """
SELECT EXISTS (SELECT 1 FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2)
"""

# $1 job, $2 org, $3 state, $4 the last woo_id shown or NULL, $5 rows. In woo_id order.
SELECT_LINES_PAGE = """
SELECT woo_id, state, page, attempts, last_error, payload IS NOT NULL AS retryable, updated_at
FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND state = $3::text
  AND ($4::bigint IS NULL OR woo_id > $4::bigint)
ORDER BY woo_id
LIMIT $5
"""

# $1 job, $2 org, $3 the last id shown or NULL, $4 rows. Oldest first (migration 0011's index).
SELECT_ACTIVITY_PAGE = """
SELECT id, at, level, event, details
FROM woo_sync_activity
WHERE job_id = $1 AND org_id = $2 AND ($3::bigint IS NULL OR id > $3::bigint)
ORDER BY id
LIMIT $4
"""

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

# $1 job id, $2 org id; after RESOLVE_CONFLICT_LINES, with the job locked. The status reads the
# job's conflicts from its row (migration 0022), which the tracker keeps; written here too so the
# answer to a resolve, and every status after it, counts what is left at once. Only the waiting
# lines are read (the (job_id, state) index).
RECOUNT_CONFLICTS = f"""
UPDATE woo_customer_sync_queue j
SET conflict_count = (SELECT count(*) FROM woo_customer_sync_queue_line l
                      WHERE l.job_id = j.id AND l.org_id = j.org_id
                        AND l.state = {sql_state(LineState.CONFLICT)})
WHERE j.id = $1 AND j.org_id = $2
"""

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


# --- orchestrate (services.api.actions.orchestrate) ---------------------------------------------

# Which of these connections ($2) the org ($1) has.
SELECT_ORG_CONNECTIONS = """
SELECT id FROM woo_connections WHERE org_id = $1 AND id = ANY($2::uuid[])
"""

# $1 id, $2 org, $3 the kind, 'orchestration' (a parameter: literals in state-changing SQL are
# read as states), $4 idempotency key, $5 batch size, $6 concurrency. A parent reads no store:
# no connection; it is processing from the start, while its children are.
INSERT_PARENT_JOB = changes_state(
    "api.INSERT_PARENT_JOB",
    "job",
    {Actor.API_ORCHESTRATE: moves((None,), (JobState.PROCESSING,))},
    f"""
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, kind, idempotency_key, batch_size, concurrency,
     started_at)
VALUES ($1, $2, NULL, {sql_state(JobState.PROCESSING)}, $3, $4, $5, $6, now())
""",
)

# $1 id, $2 org, $3 connection, $4 parent, $5 batch size, $6 concurrency, $7 conflict policy.
# created_at is the clock's, not the transaction's: children are listed in the request's order.
INSERT_CHILD_JOB = changes_state(
    "api.INSERT_CHILD_JOB",
    "job",
    {Actor.API_ORCHESTRATE: moves((None,), (JobState.DRAFT,))},
    f"""
INSERT INTO woo_customer_sync_queue
    (id, org_id, connection_id, state, parent_id, batch_size, concurrency, conflict_policy,
     created_at)
VALUES ($1, $2, $3, {sql_state(JobState.DRAFT)}, $4, $5, $6, $7, clock_timestamp())
""",
)

# A parent's children ($1 parent, $2 org), oldest first, locked for a control action (after the
# parent's own lock, always in this order).
LOCK_CHILDREN_FOR_CONTROL = """
SELECT id, connection_id, state, fetch_done_at, process_count, crawl_stopped_at, kind
FROM woo_customer_sync_queue
WHERE parent_id = $1 AND org_id = $2
ORDER BY created_at, id
FOR UPDATE
"""

# The children of a parent found by its idempotency key, to hand over drafts again.
SELECT_CHILDREN = """
SELECT id, connection_id, state FROM woo_customer_sync_queue
WHERE parent_id = $1 AND org_id = $2
ORDER BY created_at, id
"""

SELECT_PARENT_BY_IDEMPOTENCY_KEY = """
SELECT id, state, kind FROM woo_customer_sync_queue
WHERE org_id = $1 AND idempotency_key = $2
"""
