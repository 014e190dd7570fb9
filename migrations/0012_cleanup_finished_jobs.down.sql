DROP FUNCTION IF EXISTS woosync_cleanup_finished_jobs(text[], interval, int, boolean, text);
DROP INDEX IF EXISTS woo_customer_sync_queue_finished_idx;
