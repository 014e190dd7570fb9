-- Row-level security filters every line the services read by org_id. With org_id stored in the
-- index, the tracker's count of a job's lines by state stays an index-only scan for them
-- (python -m bench.rls_overhead: 1.70 times the owner's count at 100k lines before, 1.13 after).
CREATE INDEX woo_customer_sync_queue_line_state_org_idx
    ON woo_customer_sync_queue_line (job_id, state) INCLUDE (org_id);
DROP INDEX woo_customer_sync_queue_line_state_idx;
