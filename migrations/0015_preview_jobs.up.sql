-- A job is a sync (the default, every job so far) or a preview: a long preview (a store larger
-- than WOOSYNC_PREVIEW_INLINE_MAX_CUSTOMERS) is read by the fetcher as a job of kind 'preview',
-- with the same states, status and progress stream as a sync, and writes no line, page or
-- customer: its answer is kept on the job (preview_result), shown by the job's status.
-- A preview job holds its connection's reading slot (migration 0002) like a sync: a store is read
-- by one job at a time.
ALTER TABLE woo_customer_sync_queue
    ADD COLUMN kind text NOT NULL DEFAULT 'sync' CHECK (kind IN ('sync', 'preview')),
    ADD COLUMN preview_sample_size int CHECK (preview_sample_size BETWEEN 0 AND 50),
    ADD COLUMN preview_result jsonb,
    ADD CONSTRAINT woo_customer_sync_queue_preview_fields
        CHECK (kind = 'preview' OR (preview_sample_size IS NULL AND preview_result IS NULL));
