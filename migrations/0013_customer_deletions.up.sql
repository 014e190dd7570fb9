-- Customers gone from their store (issue 11, item 2). A job whose crawl read every page of the
-- store and proved it (fetch_done_at: the fetcher's window proof passed) marks, when the tracker
-- finishes it, the connection's customers it did not see as deleted: deleted_at is set, the row
-- stays. A later job that sees the customer again clears it. Rows are never removed for this.
ALTER TABLE customer ADD COLUMN deleted_at timestamptz;

-- Per job: customers this job's crawl marked deleted (set once, by the tracker, when the job
-- finishes) and customers it brought back (added by the syncer, in the transaction of the batch
-- that restored them, so a redelivered batch, which restores nothing, adds nothing).
ALTER TABLE woo_customer_sync_queue
    ADD COLUMN deleted_count int NOT NULL DEFAULT 0 CHECK (deleted_count >= 0),
    ADD COLUMN restored_count int NOT NULL DEFAULT 0 CHECK (restored_count >= 0);

-- Whether the job's crawl proved that it read every customer of the store: set with
-- fetch_done_at by the fetcher, true only when its windows were checked for gaps (pages of two
-- customers or more; services/fetcher/paging.py). Jobs read before this migration say false.
ALTER TABLE woo_customer_sync_queue ADD COLUMN fetch_proven boolean NOT NULL DEFAULT false;
