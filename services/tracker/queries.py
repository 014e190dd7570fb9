"""The tracker's SQL. Counts always come from the lines, never from event deltas.

Statements about one job take the job id as $1 and its org id as $2, and name both.

A job's counts are a pure function of its lines, so recomputing them is idempotent: a duplicated,
late or reordered event can at worst cause one extra recompute, never a wrong number. They are
read from ``woo_customer_sync_line_count`` (migration 0023), which triggers on the line table keep
equal, in the same transactions, to the lines counted by state: a tick sums a handful of rows
instead of counting every line of the job (a million for a big store).
"""

from __future__ import annotations

from shared.lifecycle import (
    FINAL_JOB_STATES,
    FINAL_LINE_STATES,
    OPEN_LINE_STATES,
    RUNNING_JOB_STATES,
    Actor,
    JobState,
    LineState,
    changes_state,
    failure_cleared,
    moves,
    sql_in,
    sql_state,
)

RUNNING = sql_in(RUNNING_JOB_STATES)
DONE, FAILED = sql_state(JobState.DONE), sql_state(JobState.FAILED)

# The job's lines by state ($1 job id, $2 org id): the sums of its counter rows (migration 0023),
# which any snapshot sees equal to its lines counted by state. A handful of rows once folded
# (FOLD_LINE_COUNTS), plus one per line statement since.
_LINE_COUNTS = f"""
counts AS (
    SELECT coalesce(sum(n), 0)::int                                                  AS total,
           coalesce(sum(n) FILTER (WHERE state = {sql_state(LineState.DONE)}), 0)::int AS done,
           coalesce(sum(n) FILTER (WHERE state = {sql_state(LineState.FAILED)}), 0)::int
               AS failed,
           coalesce(sum(n) FILTER (WHERE state IN {sql_in(OPEN_LINE_STATES)}), 0)::int AS open,
           coalesce(sum(n) FILTER (WHERE state = {sql_state(LineState.CONFLICT)}), 0)::int
               AS conflicts
    FROM woo_customer_sync_line_count
    WHERE job_id = $1 AND org_id = $2
)
"""

# $1 job id, $2 org id; run after LOCK_JOB, whose lock makes folds of one job take turns. The
# job's counter rows are replaced by their sums, one folded row per state that has lines, so the
# next tick reads only what was written since. Only when some row is not folded yet: an idle
# job's fold writes nothing. Deltas that writers commit meanwhile are not in this statement's
# snapshot, so they are neither deleted nor summed: they stay for the next fold.
FOLD_LINE_COUNTS = """
WITH gone AS (
    DELETE FROM woo_customer_sync_line_count
    WHERE job_id = $1 AND org_id = $2
      AND EXISTS (
          SELECT 1 FROM woo_customer_sync_line_count
          WHERE job_id = $1 AND org_id = $2 AND NOT folded
      )
    RETURNING state, n
)
INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n, folded)
SELECT $1, $2, state, sum(n), true FROM gone GROUP BY state HAVING sum(n) <> 0
"""

# Taken first, in the same transaction as RECOMPUTE_JOB: recomputes of one job then run one at a
# time and each counts lines in a snapshot taken after the previous one committed, so two
# trackers can never write counts that go backwards. NO KEY UPDATE does not block the fetcher's
# line inserts (their foreign-key check takes KEY SHARE).
LOCK_JOB = """
SELECT state, kind, done_count + failed_count AS settled
FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2 FOR NO KEY UPDATE
"""

# $1 job id, $2 org id. Writes the job row only when a count changed or the job finishes (no churn
# from the sweeps). The job finishes once every page is read (fetch_done_at) and no line is open
# (lines waiting as conflicts are open: the job waits for them to be resolved): done when none
# failed, else failed. A failed job whose pages were all read recovers to
# done once every line is done: its parked customers were moved back (say from the RabbitMQ
# console) and synced, or its stalled services came back and finished. The state guards are repeated
# in the WHERE clause, which PostgreSQL re-checks against the newest row version after waiting for a
# concurrent writer, so of two racing recomputes exactly one returns finished = true. No row:
# nothing changed.
RECOMPUTE_JOB = changes_state(
    "tracker.RECOMPUTE_JOB",
    "job",
    {
        Actor.TRACKER: moves(RUNNING_JOB_STATES, (JobState.DONE, JobState.FAILED))
        | moves((JobState.FAILED,), (JobState.DONE,))
    },
    "WITH "
    + _LINE_COUNTS
    + f""",
decided AS (
    SELECT j.id, c.total, c.done, c.failed, c.conflicts,
           (j.fetch_done_at IS NOT NULL AND c.open = 0
            AND j.state IN {RUNNING}) AS finishing,
           {failure_cleared("j", "c")} AS recovering,
           (j.total, j.done_count, j.failed_count, j.conflict_count)
               IS DISTINCT FROM (c.total, c.done, c.failed, c.conflicts) AS changed
    FROM woo_customer_sync_queue j, counts c
    WHERE j.id = $1 AND j.org_id = $2
)
UPDATE woo_customer_sync_queue j
SET total = d.total,
    done_count = d.done,
    failed_count = d.failed,
    conflict_count = d.conflicts,
    state = CASE WHEN d.recovering THEN {DONE}
                 WHEN NOT d.finishing THEN j.state
                 WHEN d.failed = 0 THEN {DONE}
                 ELSE {FAILED} END,
    last_error = CASE WHEN d.recovering THEN NULL
                      WHEN NOT d.finishing THEN j.last_error
                      WHEN d.failed = 0 THEN NULL
                      ELSE d.failed || ' customers failed; see the failed lines, replay the '
                           'dead-letter queue or use the retry action' END,
    finished_at = CASE WHEN d.finishing OR d.recovering THEN now() ELSE j.finished_at END,
    updated_at = now()
FROM decided d
WHERE j.id = d.id AND j.org_id = $2
  AND (d.changed OR d.finishing OR d.recovering)
  AND (NOT d.finishing OR j.state IN {RUNNING})
  AND (NOT d.recovering OR j.state = {FAILED})
RETURNING j.org_id, j.state, j.total, j.done_count, j.failed_count, j.deleted_count,
          d.finishing OR d.recovering AS finished, d.recovering AS recovered
""",
)

# $1 job id, $2 org id; run in the transaction in which RECOMPUTE_JOB finished the job (its pages
# all read, no line open). Customers gone from the store (migration 0013): if the job's crawl
# proved it read every customer (fetch_proven, set by the fetcher with fetch_done_at), each
# customer of its connection that has no line in the job (a failed line is a customer the store
# still has) is marked deleted, as one anti-join. Only rows last written before the crawl began
# (synced_at < started_at): a customer written meanwhile by anything else (another job's replay,
# a future webhook) may be newer than the crawl's view of the store. Rows are kept; deleted_at
# is set once (a customer already marked keeps its first date). The job's deleted_count holds
# how many this finish marked; a second finish (a failed job recovering) marks only what is new.
MARK_DELETED = """
WITH job AS (
    SELECT id, org_id, connection_id, started_at
    FROM woo_customer_sync_queue
    WHERE id = $1 AND org_id = $2 AND fetch_proven AND fetch_done_at IS NOT NULL
      AND started_at IS NOT NULL
), gone AS (
    UPDATE customer c
    SET deleted_at = now(), updated_at = now()
    FROM job
    WHERE c.org_id = $2 AND c.connection_id = job.connection_id
      AND c.kind = 'account'  -- guest buyers (0021) are never in the customers list
      AND c.deleted_at IS NULL
      AND c.synced_at < job.started_at
      AND NOT EXISTS (
          SELECT 1 FROM woo_customer_sync_queue_line l
          WHERE l.job_id = $1 AND l.org_id = $2 AND l.woo_id = c.woo_id
      )
    RETURNING c.woo_id
), counted AS (
    UPDATE woo_customer_sync_queue j
    SET deleted_count = j.deleted_count + (SELECT count(*) FROM gone)
    FROM job
    WHERE j.id = job.id AND j.org_id = job.org_id
    RETURNING j.deleted_count
)
SELECT (SELECT count(*) FROM gone)::int AS marked,
       (SELECT deleted_count FROM counted) AS deleted_count,
       (SELECT array_agg(woo_id) FROM (SELECT woo_id FROM gone ORDER BY woo_id LIMIT 20) AS s)
           AS sample
"""

# $1 parent id, $2 org id, $3 the kind 'orchestration' (a parameter: literals in state-changing
# SQL are read as states). A parent job's counts are its children's sums; it finishes once every
# child is final: done when every child is done, else failed with each other child's state and
# error in last_error. A failed parent recovers to done once every child is done (a child's retry
# or replay finished it). Guarded like RECOMPUTE_JOB; no row: nothing changed.
RECOMPUTE_PARENT = changes_state(
    "tracker.RECOMPUTE_PARENT",
    "job",
    {
        Actor.TRACKER: moves(RUNNING_JOB_STATES, (JobState.DONE, JobState.FAILED))
        | moves((JobState.FAILED,), (JobState.DONE,))
    },
    f"""
WITH children AS (
    SELECT count(*)::int AS n,
           (count(*) FILTER (WHERE state = {DONE}))::int AS done_n,
           (count(*) FILTER (WHERE state IN {sql_in(FINAL_JOB_STATES)}))::int AS final_n,
           coalesce(sum(total), 0)::int AS total,
           coalesce(sum(done_count), 0)::int AS done,
           coalesce(sum(failed_count), 0)::int AS failed,
           string_agg(
               CASE WHEN state <> {DONE} THEN
                   'job ' || id || ' (connection ' || connection_id || ') ' || state
                   || coalesce(': ' || last_error, '')
               END,
               '; ' ORDER BY created_at, id
           ) AS errors
    FROM woo_customer_sync_queue
    WHERE parent_id = $1 AND org_id = $2
),
decided AS (
    SELECT p.id, c.*,
           (c.n > 0 AND c.final_n = c.n AND p.state IN {RUNNING}) AS finishing,
           (c.n > 0 AND c.done_n = c.n AND p.state = {FAILED}) AS recovering,
           (p.total, p.done_count, p.failed_count)
               IS DISTINCT FROM (c.total, c.done, c.failed) AS changed
    FROM woo_customer_sync_queue p, children c
    WHERE p.id = $1 AND p.org_id = $2 AND p.kind = $3
)
UPDATE woo_customer_sync_queue p
SET total = d.total,
    done_count = d.done,
    failed_count = d.failed,
    state = CASE WHEN d.recovering THEN {DONE}
                 WHEN NOT d.finishing THEN p.state
                 WHEN d.done_n = d.n THEN {DONE}
                 ELSE {FAILED} END,
    last_error = CASE WHEN d.recovering THEN NULL
                      WHEN NOT d.finishing THEN p.last_error
                      WHEN d.done_n = d.n THEN NULL
                      ELSE left(d.errors, 2000) END,
    finished_at = CASE WHEN d.finishing OR d.recovering THEN now() ELSE p.finished_at END,
    updated_at = now()
FROM decided d
WHERE p.id = d.id AND p.org_id = $2
  AND (d.changed OR d.finishing OR d.recovering)
  AND (NOT d.finishing OR p.state IN {RUNNING})
  AND (NOT d.recovering OR p.state = {FAILED})
RETURNING p.org_id, p.state, p.total, p.done_count, p.failed_count, p.deleted_count,
          p.last_error,
          d.finishing OR d.recovering AS finished, d.recovering AS recovered
""",
)

# $1 job id, $2 org id, $3 window in seconds. The lines settled (done or failed) within the
# window, by their updated_at (migration 0011 indexes it per job and state), and the job's age:
# how a tracker that has no samples of a job yet (it just started, or never recomputed the job)
# starts measuring its rate (services.tracker.rates). Once per job per tracker, never per status.
SELECT_RECENT_SETTLED = f"""
SELECT (SELECT count(*)::int FROM woo_customer_sync_queue_line l
        WHERE l.job_id = j.id AND l.org_id = j.org_id
          AND l.state IN {sql_in(FINAL_LINE_STATES)}
          AND l.updated_at >= now() - make_interval(secs => $3)) AS recent,
       extract(epoch FROM now() - coalesce(j.started_at, j.created_at))::float8 AS age_s
FROM woo_customer_sync_queue j
WHERE j.id = $1 AND j.org_id = $2
"""

# $1 job id, $2 org id, $3 the rate (lines settled per second, or NULL: too young to tell).
# Written only when it changed, so a job that settles nothing, or stalled and settled at 0.0, is
# not written at all. updated_at stays: a rate that moves with the clock is no progress, and
# stall detection reads updated_at.
SET_RATE = """
UPDATE woo_customer_sync_queue SET rate_per_s = $3
WHERE id = $1 AND org_id = $2 AND rate_per_s IS DISTINCT FROM $3::float8
"""

# The parent of a job ($1 job id, $2 org id), if it has one: its recompute follows a child's end.
SELECT_PARENT = """
SELECT parent_id FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2
"""

# $1 job id, $2 org id, $3 error. The fetcher gave up: fail the job now, whatever its lines say,
# with its counts brought up to date. Guarded like RECOMPUTE_JOB; no row: already final.
FAIL_JOB = changes_state(
    "tracker.FAIL_JOB",
    "job",
    {Actor.TRACKER: moves(RUNNING_JOB_STATES, (JobState.FAILED,))},
    "WITH "
    + _LINE_COUNTS
    + f"""
UPDATE woo_customer_sync_queue j
SET state = {FAILED},
    last_error = $3,
    finished_at = now(),
    updated_at = now(),
    total = c.total,
    done_count = c.done,
    failed_count = c.failed,
    conflict_count = c.conflicts
FROM counts c
WHERE j.id = $1 AND j.org_id = $2 AND j.state IN {RUNNING}
RETURNING j.org_id, j.state, j.total, j.done_count, j.failed_count, j.deleted_count
""",
)

# $1 stall timeout in seconds. Jobs of every org that could still finish but showed no sign of
# life for that long: nothing touched the job row (a page read, a count changed, a state change)
# and no line changed (customers on their way through the retry tiers). A security-definer
# function (migration 0005, where its query is), as the services' role sees one org at a time.
SELECT_STALL_CANDIDATES = "SELECT id, org_id, state FROM woosync_stall_candidates($1)"

# $1 job id, $2 org id, $3 stall timeout in seconds, $4 error. Run after LOCK_JOB, so the statement
# sees the newest job row and lines: progress that came meanwhile, or a job already final, leaves no
# row. Counts are brought up to date as by FAIL_JOB. A job whose pages are all read and whose only
# open lines wait as conflicts waits for a person, not a service: it does not stall (the same
# condition as the function of migration 0017).
STALL_JOB = changes_state(
    "tracker.STALL_JOB",
    "job",
    {Actor.TRACKER: moves(RUNNING_JOB_STATES, (JobState.FAILED,))},
    "WITH "
    + _LINE_COUNTS
    + f""",
before AS (
    SELECT state, updated_at FROM woo_customer_sync_queue WHERE id = $1 AND org_id = $2
)
UPDATE woo_customer_sync_queue j
SET state = {FAILED},
    last_error = $4,
    finished_at = now(),
    updated_at = now(),
    total = c.total,
    done_count = c.done,
    failed_count = c.failed,
    conflict_count = c.conflicts
FROM counts c, before b
WHERE j.id = $1 AND j.org_id = $2
  AND j.state IN {RUNNING}
  AND j.updated_at < now() - make_interval(secs => $3)
  AND NOT EXISTS (
      SELECT 1 FROM woo_customer_sync_queue_line l
      WHERE l.job_id = $1 AND l.org_id = $2 AND l.updated_at >= now() - make_interval(secs => $3)
  )
  AND NOT (j.fetch_done_at IS NOT NULL AND c.conflicts > 0 AND c.open = c.conflicts)
RETURNING j.org_id, j.state, j.total, j.done_count, j.failed_count, j.deleted_count,
          b.state AS previous_state, b.updated_at AS last_progress_at,
          j.fetch_done_at IS NOT NULL AS fetch_complete
""",
)

# Every job that could still finish: the periodic sweep recomputes them all, which covers events
# lost while no tracker ran and the in-memory dirty set of a tracker that crashed.
# Open jobs of every org, through a security-definer function (migration 0005).
SELECT_ACTIVE_JOBS = "SELECT id, org_id FROM woosync_open_jobs()"

# An open progress stream's API key, checked again while the stream is open ($1 key id, $2 org).
KEY_IS_ACTIVE = """
SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL)
"""
