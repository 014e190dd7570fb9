-- Cleanup (issue 10, item 6): finished jobs, their lines and their pages are removed once they
-- are older than a retention, a small batch per call, by one function that the services' role
-- may execute but whose rules it cannot change:
--
--   * only jobs in a final state (the caller passes shared.lifecycle.FINAL_JOB_STATES, so a final
--     state added later is covered; the open states are refused here) that have a finishing time
--     (re-opening a job clears it) older than now() - p_retention are touched;
--   * the retention is at least one hour, the batch between 1 and 10,000 rows;
--   * a job's lines and pages go first, at most p_batch_size rows per call in all, and the job
--     row goes in the call that finds nothing of it left, so one call is one short transaction
--     even for a job of millions of lines; the caller calls again until a call removes nothing;
--   * jobs are taken oldest first and locked, skipping those another caller (another tracker, the
--     operator's `woosync cleanup`, an api action) holds, so concurrent calls never collide;
--   * each call that removes jobs writes, per org, one `jobs.removed` row to the audit log in the
--     same transaction: which jobs, their final state, dates and counts, and who ran it.
--
-- The audit log stays append-only: the trigger of 0003 and the missing UPDATE/DELETE grants of
-- 0005 are untouched, and the activity rows of a removed job are kept (woo_sync_activity.job_id
-- carries no foreign key, so nothing cascades to it). The function runs as the schema's owner
-- (SECURITY DEFINER, search_path pinned); inside it the owner's operator policy of 0008 applies
-- (session_user differs from current_user), so it reaches every org: one leader cleans them all.
-- p_dry_run counts what a full cleanup would remove and changes nothing.

CREATE INDEX woo_customer_sync_queue_finished_idx
    ON woo_customer_sync_queue (finished_at)
    WHERE finished_at IS NOT NULL;

CREATE FUNCTION woosync_cleanup_finished_jobs(
    p_final_states text[],
    p_retention interval,
    p_batch_size int,
    p_dry_run boolean,
    p_by text
)
RETURNS TABLE (jobs bigint, lines bigint, pages bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_cutoff timestamptz;
    v_jobs uuid[];
    v_budget bigint := p_batch_size;
    v_lines bigint := 0;
    v_pages bigint := 0;
    v_removed bigint := 0;
BEGIN
    IF p_retention IS NULL OR p_retention < interval '1 hour' THEN
        RAISE EXCEPTION 'cleanup: the retention must be at least 1 hour, not %', p_retention
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'cleanup: the batch size must be between 1 and 10000, not %', p_batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The open states of the job table (and 'paused', which stops a job without finishing it)
    -- never count as final, whatever the caller says.
    IF p_final_states IS NULL OR cardinality(p_final_states) = 0
       OR array_position(p_final_states, NULL) IS NOT NULL
       OR p_final_states && ARRAY['draft', 'queued', 'processing', 'paused'] THEN
        RAISE EXCEPTION 'cleanup: % are not final job states', p_final_states
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dry_run IS NULL OR p_by IS NULL OR length(p_by) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'cleanup: say whether it is a dry run and who runs it (1 to 200 characters)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_cutoff := now() - p_retention;

    IF p_dry_run THEN
        RETURN QUERY
        SELECT count(*),
               coalesce(sum((SELECT count(*) FROM woo_customer_sync_queue_line l
                              WHERE l.job_id = j.id)), 0)::bigint,
               coalesce(sum((SELECT count(*) FROM woo_customer_sync_page p
                              WHERE p.job_id = j.id)), 0)::bigint
        FROM woo_customer_sync_queue j
        WHERE j.state = ANY (p_final_states)
          AND j.finished_at IS NOT NULL AND j.finished_at < v_cutoff;
        RETURN;
    END IF;

    SELECT array_agg(c.id) INTO v_jobs
    FROM (
        SELECT j.id
        FROM woo_customer_sync_queue j
        WHERE j.state = ANY (p_final_states)
          AND j.finished_at IS NOT NULL AND j.finished_at < v_cutoff
        ORDER BY j.finished_at, j.id
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED
    ) AS c;
    IF v_jobs IS NULL THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint;
        RETURN;
    END IF;

    WITH doomed AS (
        SELECT l.job_id, l.woo_id FROM woo_customer_sync_queue_line l
        WHERE l.job_id = ANY (v_jobs)
        LIMIT v_budget
    )
    DELETE FROM woo_customer_sync_queue_line l
    USING doomed d
    WHERE l.job_id = d.job_id AND l.woo_id = d.woo_id;
    GET DIAGNOSTICS v_lines = ROW_COUNT;
    v_budget := v_budget - v_lines;

    IF v_budget > 0 THEN
        WITH doomed AS (
            SELECT p.job_id, p.page FROM woo_customer_sync_page p
            WHERE p.job_id = ANY (v_jobs)
            LIMIT v_budget
        )
        DELETE FROM woo_customer_sync_page p
        USING doomed d
        WHERE p.job_id = d.job_id AND p.page = d.page;
        GET DIAGNOSTICS v_pages = ROW_COUNT;
    END IF;

    WITH removed AS (
        DELETE FROM woo_customer_sync_queue j
        WHERE j.id = ANY (v_jobs)
          AND NOT EXISTS (SELECT 1 FROM woo_customer_sync_queue_line l WHERE l.job_id = j.id)
          AND NOT EXISTS (SELECT 1 FROM woo_customer_sync_page p WHERE p.job_id = j.id)
        RETURNING j.id, j.org_id, j.state, j.created_at, j.finished_at, j.total, j.done_count,
                  j.failed_count
    ), audited AS (
        INSERT INTO woo_sync_activity (job_id, org_id, level, event, details)
        SELECT NULL, r.org_id, 'info', 'jobs.removed',
               jsonb_build_object(
                   'by', p_by,
                   'retention', p_retention::text,
                   'finished_before', v_cutoff,
                   'count', count(*),
                   'jobs', jsonb_agg(
                       jsonb_build_object(
                           'job_id', r.id, 'state', r.state, 'created_at', r.created_at,
                           'finished_at', r.finished_at, 'total', r.total,
                           'done', r.done_count, 'failed', r.failed_count
                       ) ORDER BY r.finished_at, r.id
                   )
               )
        FROM removed r
        GROUP BY r.org_id
        RETURNING 1
    )
    SELECT count(*) INTO v_removed FROM removed;

    RETURN QUERY SELECT v_removed, v_lines, v_pages;
END
$$;

REVOKE EXECUTE ON FUNCTION woosync_cleanup_finished_jobs(text[], interval, int, boolean, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION woosync_cleanup_finished_jobs(text[], interval, int, boolean, text)
    TO woosync_app;
