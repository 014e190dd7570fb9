DROP TABLE woosync_stream_lease;
DROP TABLE woosync_rate_limit;

DROP POLICY operator_access ON orgs;
DROP POLICY operator_access ON api_keys;
DROP POLICY operator_access ON woo_connections;
DROP POLICY operator_access ON woo_customer_sync_queue;
DROP POLICY operator_access ON woo_customer_sync_page;
DROP POLICY operator_access ON woo_customer_sync_queue_line;
DROP POLICY operator_access ON woo_sync_activity;
DROP POLICY operator_access ON customer;
DROP FUNCTION woosync_operator_session();

ALTER TABLE orgs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys NO FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_connections NO FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue NO FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_page NO FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue_line NO FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_sync_activity NO FORCE ROW LEVEL SECURITY;
ALTER TABLE customer NO FORCE ROW LEVEL SECURITY;
