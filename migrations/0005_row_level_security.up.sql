-- Row-level security: the second wall between organisations, behind the org filter that every
-- query carries. The services connect as woosync_app, which owns nothing, cannot bypass row
-- security, and sees only the rows of the org its transaction names:
--
--     SELECT set_config('woosync.org_id', '<org uuid>', true);   -- local to the transaction
--
-- A transaction that names no org sees no org data and can write none. The two reads that
-- legitimately span orgs (finding the org of an API key; the tracker's sweep of open jobs) are
-- SECURITY DEFINER functions below that return only what those callers need. The table owner
-- (the role that runs `woosync migrate`, and the operator commands) is not subject to these
-- policies; services never connect as it.

-- Roles belong to the cluster, not to one database: create it once, idempotently. It gets a
-- password from `woosync migrate` when WOOSYNC_DATABASE_URL carries one.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'woosync_app') THEN
        CREATE ROLE woosync_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object THEN
    NULL;  -- created meanwhile by a migration of another database
END
$$;

-- The org the current transaction acts for; NULL when it names none (then no policy matches).
CREATE FUNCTION woosync_current_org() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(current_setting('woosync.org_id', true), '')::uuid
$$;

GRANT USAGE ON SCHEMA public TO woosync_app;
GRANT SELECT ON schema_migrations TO woosync_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    orgs, api_keys, woo_connections, woo_customer_sync_queue, woo_customer_sync_page,
    woo_customer_sync_queue_line, customer
    TO woosync_app;
-- The audit log is append-only for the services by privilege too (the trigger of 0003 stays).
GRANT SELECT, INSERT ON woo_sync_activity TO woosync_app;
GRANT USAGE ON SEQUENCE woo_sync_activity_id_seq TO woosync_app;

ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_connections ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_page ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue_line ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_sync_activity ENABLE ROW LEVEL SECURITY;
ALTER TABLE customer ENABLE ROW LEVEL SECURITY;

-- USING filters what is read, updated and deleted; WITH CHECK (the same expression when not
-- given) refuses rows written for another org. The org is read in a sub-select, which PostgreSQL
-- evaluates once per statement instead of once per row (a 100k-line count: 16 ms, not 41 ms).
CREATE POLICY org_isolation ON orgs
    USING (id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON api_keys
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON woo_connections
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON woo_customer_sync_queue
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON woo_customer_sync_queue_line
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON woo_sync_activity
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY org_isolation ON customer
    USING (org_id = (SELECT woosync_current_org()));
-- Pages carry no org of their own: they belong to a job the org can see (a subquery that is
-- itself filtered by the job table's policy).
CREATE POLICY org_isolation ON woo_customer_sync_page
    USING (EXISTS (SELECT 1 FROM woo_customer_sync_queue j WHERE j.id = job_id));

-- The API key lookup, before any org is known: the key's id and org for an unrevoked key's hash,
-- recording its use. Nothing else of the table is reachable through it.
CREATE FUNCTION woosync_authenticate(p_key_hash bytea)
RETURNS TABLE (id uuid, org_id uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE api_keys SET last_used_at = now()
    WHERE key_hash = p_key_hash AND revoked_at IS NULL
    RETURNING id, org_id
$$;

-- The tracker's sweep: which jobs of any org are still open, and whose they are.
CREATE FUNCTION woosync_open_jobs()
RETURNS TABLE (id uuid, org_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id, org_id FROM woo_customer_sync_queue WHERE state IN ('queued', 'processing')
$$;

-- The tracker's stall check: open jobs of any org with no progress for p_timeout_s seconds.
CREATE FUNCTION woosync_stall_candidates(p_timeout_s double precision)
RETURNS TABLE (id uuid, org_id uuid, state text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT j.id, j.org_id, j.state
    FROM woo_customer_sync_queue j
    WHERE j.state IN ('queued', 'processing')
      AND j.updated_at < now() - make_interval(secs => p_timeout_s)
      AND NOT EXISTS (
          SELECT 1 FROM woo_customer_sync_queue_line l
          WHERE l.job_id = j.id AND l.updated_at >= now() - make_interval(secs => p_timeout_s)
      )
$$;

REVOKE EXECUTE ON FUNCTION woosync_authenticate(bytea), woosync_open_jobs(),
    woosync_stall_candidates(double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION woosync_authenticate(bytea), woosync_open_jobs(),
    woosync_stall_candidates(double precision) TO woosync_app;
