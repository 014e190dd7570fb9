-- Preview jobs go with their kind: a preview writes nothing else, so nothing else is lost.
DELETE FROM woo_customer_sync_queue WHERE kind = 'preview';
ALTER TABLE woo_customer_sync_queue
    DROP CONSTRAINT woo_customer_sync_queue_preview_fields,
    DROP COLUMN preview_result,
    DROP COLUMN preview_sample_size,
    DROP COLUMN kind;
