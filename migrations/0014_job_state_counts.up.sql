-- Jobs by state for the tracker's /metrics: how many jobs of all orgs are in each state, and
-- nothing else. The tracker runs as woosync_app, which row-level security confines to one org
-- per transaction, so a cross-org count needs a SECURITY DEFINER function (as the sweep's
-- woosync_open_jobs in 0005). This one returns aggregates only: no id, no org, no row.
CREATE FUNCTION woosync_job_state_counts()
RETURNS TABLE (state text, jobs bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT state, count(*) FROM woo_customer_sync_queue GROUP BY state
$$;

REVOKE EXECUTE ON FUNCTION woosync_job_state_counts() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION woosync_job_state_counts() TO woosync_app;
