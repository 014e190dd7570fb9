ALTER TABLE woo_customer_sync_queue
    DROP COLUMN fetch_proven, DROP COLUMN restored_count, DROP COLUMN deleted_count;
ALTER TABLE customer DROP COLUMN deleted_at;
