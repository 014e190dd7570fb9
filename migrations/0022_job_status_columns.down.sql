ALTER TABLE woo_customer_sync_queue DROP COLUMN rate_per_s, DROP COLUMN conflict_count;
