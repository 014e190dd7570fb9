-- History and visibility (issue 10, item 5).
--
-- 1. A job's rate (shared/jobs.py) counts the lines it settled in the last seconds: with
--    updated_at after (job_id, state) in the index that is a short range scan per settled state,
--    not a pass over every line of a large job. It replaces 0006's (job_id, state) index, whose
--    counts it serves the same way (org_id stays included, for the index-only counts under
--    row-level security), so a line update maintains no extra index: state and updated_at change
--    together, and a state change never was a HOT update.
-- 2. A job's activity log is paged by id (the api's activity route), in order of id per job.
CREATE INDEX woo_customer_sync_queue_line_state_updated_idx
    ON woo_customer_sync_queue_line (job_id, state, updated_at) INCLUDE (org_id);
DROP INDEX woo_customer_sync_queue_line_state_org_idx;

CREATE INDEX woo_sync_activity_job_id_idx ON woo_sync_activity (job_id, id);
