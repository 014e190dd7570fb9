DROP TABLE IF EXISTS customer;
DROP TABLE IF EXISTS woo_sync_activity;
DROP TABLE IF EXISTS woo_customer_sync_queue_line;
DROP TABLE IF EXISTS woo_customer_sync_page;
DROP TABLE IF EXISTS woo_customer_sync_queue;
DROP TABLE IF EXISTS woo_connections;
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS orgs;
