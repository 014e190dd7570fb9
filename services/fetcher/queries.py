"""SQL of the fetcher: load a job with its connection, and record what was read, idempotently.

Every statement names the job's org as well as its id (row-level security is the second wall).
"""

from shared.lifecycle import (
    ACTIVE_JOB_STATES,
    FINAL_JOB_STATES,
    Actor,
    JobState,
    LineState,
    changes_state,
    moves,
    sql_in,
    sql_state,
)
from shared.preview import STORED_COLUMNS

# A message can only ever reach its own org's connection.
SELECT_JOB_WITH_CONNECTION = """
SELECT j.id, j.org_id, j.state, j.batch_size, j.concurrency, j.fetch_done_at, j.pages_total,
       j.kind, j.preview_sample_size, j.include_guests, c.id AS connection_id, c.store_url,
       c.auth_mode, c.verify_tls, c.consumer_key, c.consumer_secret_enc
FROM woo_customer_sync_queue j
JOIN woo_connections c ON c.id = j.connection_id AND c.org_id = j.org_id
WHERE j.id = $1 AND j.org_id = $2
"""

# A paused or cancelled job is not taken: see MARK_CRAWL_STOPPED. A crawl begins: it has not
# stopped (crawl_stopped_at) until it ends for a pause or a cancel.
MARK_JOB_PROCESSING = changes_state(
    "fetcher.MARK_JOB_PROCESSING",
    "job",
    {Actor.FETCHER: moves(ACTIVE_JOB_STATES, (JobState.PROCESSING,))},
    f"""
UPDATE woo_customer_sync_queue
SET state = {sql_state(JobState.PROCESSING)}, started_at = coalesce(started_at, now()),
    process_count = process_count + 1, crawl_stopped_at = NULL, updated_at = now()
WHERE id = $1 AND org_id = $2 AND state IN {sql_in(ACTIVE_JOB_STATES)}
RETURNING process_count
""",
)

# The job is paused or cancelled: no crawl of it runs any more (this one ended, or a delivery
# found it so). An UPDATE, so a resume that is committing (its sync.requested already published)
# is waited for and then seen: no row, and the crawl goes on. Frees a cancelled job's slot
# (migration 0010). Returns the job's state when it is stopped.
MARK_CRAWL_STOPPED = f"""
UPDATE woo_customer_sync_queue
SET crawl_stopped_at = coalesce(crawl_stopped_at, now())
WHERE id = $1 AND org_id = $2
  AND state IN {sql_in({JobState.PAUSED, JobState.CANCELLED})}
RETURNING state
"""

RECORD_STORE_TOTALS = """
UPDATE woo_customer_sync_queue
SET store_total = coalesce(store_total, $2), pages_total = greatest(coalesce(pages_total, 0), $3),
    updated_at = now()
WHERE id = $1 AND org_id = $4
"""

# Pages have no org of their own: they are the org's through their job.
SELECT_FETCHED_PAGES = """
SELECT p.page, p.customers, p.start_offset, p.first_id, p.last_id
FROM woo_customer_sync_page p
JOIN woo_customer_sync_queue j ON j.id = p.job_id AND j.org_id = $2
WHERE p.job_id = $1
"""

# Adding a line twice is a no-op; a line already settled keeps its state. Returns the lines
# this statement created; in ascending id order, so two writers of overlapping sets (two
# fetchers, or a syncer creating a line) wait for each other instead of deadlocking.
INSERT_LINES = changes_state(
    "fetcher.INSERT_LINES",
    "line",
    {Actor.FETCHER: moves((None,), (LineState.PENDING,))},
    f"""
INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, page, state)
SELECT $1, woo_id, $2, $3, {sql_state(LineState.PENDING)}
FROM unnest($4::bigint[]) AS woo_id ORDER BY woo_id
ON CONFLICT (job_id, woo_id) DO NOTHING
RETURNING woo_id
""",
)

# As INSERT_LINES, for the guests of a job (services.fetcher.guests): $4 the kind ('guest'),
# no page.
INSERT_GUEST_LINES = changes_state(
    "fetcher.INSERT_GUEST_LINES",
    "line",
    {Actor.FETCHER: moves((None,), (LineState.PENDING,))},
    f"""
INSERT INTO woo_customer_sync_queue_line (job_id, woo_id, org_id, kind, state)
SELECT $1, woo_id, $2, $4, {sql_state(LineState.PENDING)}
FROM unnest($3::bigint[]) AS woo_id ORDER BY woo_id
ON CONFLICT (job_id, woo_id) DO NOTHING
RETURNING woo_id
""",
)

# The job's row is written at most every HEARTBEAT_MS by the crawl's page records: a sign of life
# for the tracker's stall detection (the job's updated_at), not a write per page, so concurrent
# windows do not queue on the job's row lock (nor behind a recompute of its counts holding it).
HEARTBEAT_MS = 200
_HEARTBEAT = f"""
beat AS (
    UPDATE woo_customer_sync_queue SET updated_at = now()
    WHERE id = $1 AND org_id = {{org}} AND state NOT IN {sql_in(FINAL_JOB_STATES)}
      AND updated_at < now() - interval '{HEARTBEAT_MS} milliseconds'
), job AS (
    SELECT id FROM woo_customer_sync_queue
    WHERE id = $1 AND org_id = {{org}} AND state NOT IN {sql_in(FINAL_JOB_STATES)}
)"""

# $7 org id. The page, its window's offset and id bounds (the first read of a page is kept), for
# the org's job only, and only while the job is open: returns 0 when it is final (forced done,
# failed), so the crawl stops and this transaction is rolled back. With the heartbeat above.
MARK_PAGE_FETCHED = (
    "WITH"
    + _HEARTBEAT.format(org="$7")
    + """, page AS (
    INSERT INTO woo_customer_sync_page (job_id, page, customers, start_offset, first_id, last_id)
    SELECT id, $2, $3, $4, $5, $6 FROM job
    ON CONFLICT (job_id, page) DO NOTHING
)
SELECT count(*) FROM job
"""
)

# As MARK_PAGE_FETCHED, for a read that is no page of its own (a re-read closing a gap).
TOUCH_JOB = "WITH" + _HEARTBEAT.format(org="$2") + "\nSELECT count(*) FROM job\n"

# The job's state, locked FOR KEY SHARE to the commit of a page's record: a pause or cancel (FOR
# UPDATE) waits for a record under way, and a record after it sees it. Compatible with the
# tracker's and the heartbeat's NO KEY UPDATE, with the syncer's KEY SHARE and with other
# windows' records. In the same round trip, the record's commit is made not to wait for the WAL
# flush (SET LOCAL synchronous_commit = off; see services/fetcher/handlers.py for why it may).
LOCK_JOB_STATE = """
SELECT state, set_config('synchronous_commit', 'off', true) AS synchronous_commit
FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR KEY SHARE
"""


# The job's state (None: gone), read without a lock: the crawl's check that it should go on.
SELECT_JOB_STATE = "SELECT state FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2"

# Items of a page that are no storable customer (see services.fetcher.items): failed lines at
# once, under their synthetic negative ids, with the reason; no payload, as no retry can help.
INSERT_REJECTED_LINES = changes_state(
    "fetcher.INSERT_REJECTED_LINES",
    "line",
    {Actor.FETCHER: moves((None,), (LineState.FAILED,))},
    f"""
INSERT INTO woo_customer_sync_queue_line
    (job_id, woo_id, org_id, page, state, attempts, last_error)
SELECT $1, r.woo_id, $2, $3, {sql_state(LineState.FAILED)}, 1, r.error
FROM unnest($4::bigint[], $5::text[]) AS r(woo_id, error)
ORDER BY r.woo_id
ON CONFLICT (job_id, woo_id) DO NOTHING
RETURNING woo_id
""",
)

# Lines of customers that cannot be sent (too large for a message): failed at once, no payload.
# Whatever their state but cancelled: a line synced before from a smaller version fails too.
FAIL_LINES = changes_state(
    "fetcher.FAIL_LINES",
    "line",
    {Actor.FETCHER: moves(set(LineState) - {LineState.CANCELLED}, (LineState.FAILED,))},
    f"""
UPDATE woo_customer_sync_queue_line l
SET state = {sql_state(LineState.FAILED)}, attempts = 1, last_error = r.error, updated_at = now()
FROM unnest($3::bigint[], $4::text[]) AS r(woo_id, error)
WHERE l.job_id = $1 AND l.org_id = $2 AND l.woo_id = r.woo_id
  AND l.state <> {sql_state(LineState.CANCELLED)}
""",
)

# The store answers fewer customers per page than asked (a caching plugin's cap): the job reads
# with the store's page size from now on. Pages recorded with the old size are forgotten (their
# lines stay), so every window of the crawl has the same size.
ADAPT_BATCH_SIZE = f"""
WITH job AS (
    UPDATE woo_customer_sync_queue SET batch_size = $3, updated_at = now()
    WHERE id = $1 AND org_id = $2 AND state NOT IN {sql_in(FINAL_JOB_STATES)}
    RETURNING id
)
DELETE FROM woo_customer_sync_page p USING job WHERE p.job_id = job.id
"""

# The job's pages are forgotten (their lines stay): the next crawl of the job reads them all.
FORGET_PAGES = """
DELETE FROM woo_customer_sync_page p
USING woo_customer_sync_queue j
WHERE p.job_id = $1 AND j.id = p.job_id AND j.org_id = $2
"""

# Distinct customers (and rejected items) recorded for the job: the completeness check. Guests'
# lines (migration 0021) are no customers of the store's X-WP-Total.
COUNT_LINES = """
SELECT count(*) FROM woo_customer_sync_queue_line
WHERE job_id = $1 AND org_id = $2 AND kind = 'account'
"""

# The job's lines, and those published but not yet taken by the syncer (services.fetcher.backlog):
# sums of its counter rows (migration 0023), which any snapshot sees equal to its lines by state.
SELECT_BACKLOG = f"""
SELECT coalesce(sum(n), 0)::bigint AS lines,
       coalesce(sum(n) FILTER (WHERE state = {sql_state(LineState.PENDING)}), 0)::bigint AS unsent
FROM woo_customer_sync_line_count
WHERE job_id = $1 AND org_id = $2
"""

# $4: the crawl's windows were proven to join (pages of two customers or more): only such a
# crawl may mark the customers it did not see as deleted (services/tracker, migration 0013).
MARK_FETCH_DONE = """
UPDATE woo_customer_sync_queue
SET fetch_done_at = coalesce(fetch_done_at, now()),
    fetch_proven = $4,
    pages_total = greatest(coalesce(pages_total, 0), $2),
    updated_at = now()
WHERE id = $1 AND org_id = $3
RETURNING (
    SELECT count(*) FROM woo_customer_sync_queue_line WHERE job_id = $1 AND org_id = $3
) AS lines
"""

# -- previews (read only: services.fetcher.preview) ----------------------------------------------

# The stored rows of the store's customers ($3: their woo_ids), columns of shared.preview.
SELECT_PREVIEW_ROWS = f"""
SELECT {", ".join(STORED_COLUMNS)}
FROM customer
WHERE org_id = $1 AND connection_id = $2 AND woo_id = ANY($3::bigint[])
"""

# The rows of the connection whose customers the store no longer has ($3: every woo_id it has):
# how many, and the first $4 of them: what a sync would mark deleted (migration 0013). A row
# already marked deleted is not counted again.
_NOT_IN_STORE = """
FROM customer
WHERE org_id = $1 AND connection_id = $2 AND kind = 'account' AND woo_id <> ALL($3::bigint[])
  AND deleted_at IS NULL
"""
COUNT_PREVIEW_GONE = "SELECT count(*)" + _NOT_IN_STORE
SELECT_PREVIEW_GONE = (
    f"SELECT {', '.join(STORED_COLUMNS)}" + _NOT_IN_STORE + "ORDER BY woo_id LIMIT $4"
)

# A preview job's answer, once its store is read: the job is then read, as a sync's is after its
# last page (the tracker finishes it: it has no line to wait for). Not a state change.
FINISH_PREVIEW = """
UPDATE woo_customer_sync_queue
SET preview_result = $3,
    store_total = coalesce(store_total, $4),
    pages_total = greatest(coalesce(pages_total, 0), $5),
    fetch_done_at = coalesce(fetch_done_at, now()),
    updated_at = now()
WHERE id = $1 AND org_id = $2 AND kind = 'preview'
"""
