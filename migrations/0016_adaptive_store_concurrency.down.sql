DROP TABLE woosync_store_lease;
DROP TABLE woosync_store_limit;
-- Jobs that adapted their concurrency get the former default.
UPDATE woo_customer_sync_queue SET concurrency = 4 WHERE concurrency IS NULL;
ALTER TABLE woo_customer_sync_queue ALTER COLUMN concurrency SET NOT NULL;
