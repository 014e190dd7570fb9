-- At most one job per store connection reads the store at a time, whatever path made it active
-- (a start, a retry that resumes the fetch): two crawls of one store would double its load and
-- race on the same customers. A job whose pages are all read (fetch_done_at set) no longer holds
-- the slot, so a replay or retry that only re-sends parked or failed customers never conflicts.
-- The api additionally answers a start for a connection with any open job with that job.
-- Creating the index fails if two jobs of one connection are reading their store right now:
-- let one finish (or force it done) and migrate again.
CREATE UNIQUE INDEX woo_customer_sync_queue_one_fetch_per_connection
    ON woo_customer_sync_queue (connection_id)
    WHERE state IN ('draft', 'queued', 'processing') AND fetch_done_at IS NULL;

-- The open jobs of an org and of a connection: the api's concurrency checks read only these.
CREATE INDEX woo_customer_sync_queue_open_idx
    ON woo_customer_sync_queue (org_id, connection_id)
    WHERE state IN ('draft', 'queued', 'processing');
