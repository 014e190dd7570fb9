DROP INDEX woo_sync_activity_job_id_idx;
CREATE INDEX woo_customer_sync_queue_line_state_org_idx
    ON woo_customer_sync_queue_line (job_id, state) INCLUDE (org_id);
DROP INDEX woo_customer_sync_queue_line_state_updated_idx;
