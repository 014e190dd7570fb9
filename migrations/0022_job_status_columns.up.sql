-- Status under load (issue 12): a job's status is one primary-key read of its row. What it used
-- to count from the lines on every request is written here by the tracker's recompute instead:
-- the lines waiting as conflicts, and the rate (lines settled per second over the recent window,
-- services/tracker/rates.py). A job that settled nothing moves at 0.0 from its first moment; NULL
-- is a rate too young to tell (some settled within the first second).
ALTER TABLE woo_customer_sync_queue
    ADD COLUMN conflict_count integer NOT NULL DEFAULT 0,
    ADD COLUMN rate_per_s double precision DEFAULT 0.0;

-- Jobs open at the migration start right; the tracker keeps them so from its next recompute.
UPDATE woo_customer_sync_queue j
SET conflict_count = c.n
FROM (SELECT job_id, count(*)::int AS n FROM woo_customer_sync_queue_line
      WHERE state = 'conflict' GROUP BY job_id) AS c
WHERE j.id = c.job_id;
