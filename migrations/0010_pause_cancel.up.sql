-- Pausing, resuming and cancelling a sync job (issue 10): the states `paused` and `cancelled` of a
-- job and `cancelled` of a line, the moment a job's crawl really stopped, and the batches the
-- syncer holds while their job is paused.

ALTER TABLE woo_customer_sync_queue DROP CONSTRAINT woo_customer_sync_queue_state_check;
ALTER TABLE woo_customer_sync_queue ADD CONSTRAINT woo_customer_sync_queue_state_check
    CHECK (state IN ('draft', 'queued', 'processing', 'paused', 'done', 'failed', 'cancelled'));

ALTER TABLE woo_customer_sync_queue_line DROP CONSTRAINT woo_customer_sync_queue_line_state_check;
ALTER TABLE woo_customer_sync_queue_line ADD CONSTRAINT woo_customer_sync_queue_line_state_check
    CHECK (state IN ('pending', 'processing', 'done', 'failed', 'cancelled'));

-- Set by the fetcher when a crawl ends because its job was paused or cancelled (or found so when
-- a delivery arrives), by the cancel action when no crawl can be running; cleared when a crawl
-- begins again. A cancelled job keeps its connection's slot until then: a new sync of the store
-- starts only once the old crawl has stopped sending requests.
ALTER TABLE woo_customer_sync_queue ADD COLUMN crawl_stopped_at timestamptz;

-- Migration 0002's slot, with the new states: a paused job holds it (it reads on when resumed),
-- a cancelled one until its crawl has stopped.
DROP INDEX woo_customer_sync_queue_one_fetch_per_connection;
CREATE UNIQUE INDEX woo_customer_sync_queue_one_fetch_per_connection
    ON woo_customer_sync_queue (connection_id)
    WHERE fetch_done_at IS NULL
      AND (state IN ('draft', 'queued', 'processing', 'paused')
           OR (state = 'cancelled' AND crawl_stopped_at IS NULL));

DROP INDEX woo_customer_sync_queue_open_idx;
CREATE INDEX woo_customer_sync_queue_open_idx
    ON woo_customer_sync_queue (org_id, connection_id)
    WHERE state IN ('draft', 'queued', 'processing', 'paused');

-- Customer batches that reached the syncer while their job was paused, as they arrived (the
-- message body and its retry attempt): kept here instead of in a queue, so a paused job neither
-- spends redeliveries nor delays other orgs' batches. `resume` publishes them again and deletes
-- them in one transaction; `cancel` deletes them.
CREATE TABLE woo_customer_sync_hold (
    id        bigserial PRIMARY KEY,
    job_id    uuid NOT NULL REFERENCES woo_customer_sync_queue (id) ON DELETE CASCADE,
    org_id    uuid NOT NULL,
    attempt   int NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    batch     bytea NOT NULL,  -- the message body as JSON (a customer's text may hold NUL)
    held_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX woo_customer_sync_hold_job_idx ON woo_customer_sync_hold (job_id, id);

GRANT SELECT, INSERT, DELETE ON woo_customer_sync_hold TO woosync_app;
GRANT USAGE ON SEQUENCE woo_customer_sync_hold_id_seq TO woosync_app;
ALTER TABLE woo_customer_sync_hold ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_hold FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON woo_customer_sync_hold
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY operator_access ON woo_customer_sync_hold TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
