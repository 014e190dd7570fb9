-- Back to the states before 0010. A paused job becomes failed (a retry reads on from its
-- recorded pages; its held batches are lost with their table, and its failed lines are the
-- record), a cancelled one done; cancelled lines become failed.
DROP TABLE IF EXISTS woo_customer_sync_hold;

UPDATE woo_customer_sync_queue
SET state = 'failed', last_error = 'paused when migration 0010 was undone', finished_at = now()
WHERE state = 'paused';
UPDATE woo_customer_sync_queue SET state = 'done' WHERE state = 'cancelled';
UPDATE woo_customer_sync_queue_line SET state = 'failed', last_error = 'cancelled'
WHERE state = 'cancelled';

DROP INDEX woo_customer_sync_queue_open_idx;
CREATE INDEX woo_customer_sync_queue_open_idx
    ON woo_customer_sync_queue (org_id, connection_id)
    WHERE state IN ('draft', 'queued', 'processing');

DROP INDEX woo_customer_sync_queue_one_fetch_per_connection;
CREATE UNIQUE INDEX woo_customer_sync_queue_one_fetch_per_connection
    ON woo_customer_sync_queue (connection_id)
    WHERE state IN ('draft', 'queued', 'processing') AND fetch_done_at IS NULL;

ALTER TABLE woo_customer_sync_queue DROP COLUMN crawl_stopped_at;

ALTER TABLE woo_customer_sync_queue_line DROP CONSTRAINT woo_customer_sync_queue_line_state_check;
ALTER TABLE woo_customer_sync_queue_line ADD CONSTRAINT woo_customer_sync_queue_line_state_check
    CHECK (state IN ('pending', 'processing', 'done', 'failed'));

ALTER TABLE woo_customer_sync_queue DROP CONSTRAINT woo_customer_sync_queue_state_check;
ALTER TABLE woo_customer_sync_queue ADD CONSTRAINT woo_customer_sync_queue_state_check
    CHECK (state IN ('draft', 'queued', 'processing', 'done', 'failed'));
