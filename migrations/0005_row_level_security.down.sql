-- Back to isolation by query filters alone. The role stays: it belongs to the cluster and other
-- databases may use it; this database's privileges for it are removed.
DROP FUNCTION IF EXISTS woosync_authenticate(bytea);
DROP FUNCTION IF EXISTS woosync_open_jobs();
DROP FUNCTION IF EXISTS woosync_stall_candidates(double precision);

DROP POLICY IF EXISTS org_isolation ON orgs;
DROP POLICY IF EXISTS org_isolation ON api_keys;
DROP POLICY IF EXISTS org_isolation ON woo_connections;
DROP POLICY IF EXISTS org_isolation ON woo_customer_sync_queue;
DROP POLICY IF EXISTS org_isolation ON woo_customer_sync_page;
DROP POLICY IF EXISTS org_isolation ON woo_customer_sync_queue_line;
DROP POLICY IF EXISTS org_isolation ON woo_sync_activity;
DROP POLICY IF EXISTS org_isolation ON customer;

ALTER TABLE orgs DISABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys DISABLE ROW LEVEL SECURITY;
ALTER TABLE woo_connections DISABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue DISABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_page DISABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue_line DISABLE ROW LEVEL SECURITY;
ALTER TABLE woo_sync_activity DISABLE ROW LEVEL SECURITY;
ALTER TABLE customer DISABLE ROW LEVEL SECURITY;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM woosync_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM woosync_app;
REVOKE USAGE ON SCHEMA public FROM woosync_app;
DROP FUNCTION IF EXISTS woosync_current_org();
