-- Parents go (their children stay, as the plain sync jobs they are).
CREATE OR REPLACE FUNCTION woosync_stall_candidates(p_timeout_s double precision)
RETURNS TABLE (id uuid, org_id uuid, state text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT j.id, j.org_id, j.state
    FROM woo_customer_sync_queue j
    WHERE j.state IN ('queued', 'processing')
      AND j.updated_at < now() - make_interval(secs => p_timeout_s)
      AND NOT EXISTS (
          SELECT 1 FROM woo_customer_sync_queue_line l
          WHERE l.job_id = j.id AND l.updated_at >= now() - make_interval(secs => p_timeout_s)
      )
      AND NOT (
          j.fetch_done_at IS NOT NULL
          AND EXISTS (SELECT 1 FROM woo_customer_sync_queue_line l
                      WHERE l.job_id = j.id AND l.state = 'conflict')
          AND NOT EXISTS (SELECT 1 FROM woo_customer_sync_queue_line l
                          WHERE l.job_id = j.id AND l.state IN ('pending', 'processing'))
      )
$$;

DROP INDEX woo_customer_sync_queue_parent_idx;
ALTER TABLE woo_customer_sync_queue
    DROP CONSTRAINT woo_customer_sync_queue_parent_is_sync,
    DROP COLUMN parent_id;
DELETE FROM woo_customer_sync_queue WHERE kind = 'orchestration';
ALTER TABLE woo_customer_sync_queue
    DROP CONSTRAINT woo_customer_sync_queue_orchestration_connection,
    ALTER COLUMN connection_id SET NOT NULL,
    DROP CONSTRAINT woo_customer_sync_queue_kind_check,
    ADD CONSTRAINT woo_customer_sync_queue_kind_check CHECK (kind IN ('sync', 'preview'));
