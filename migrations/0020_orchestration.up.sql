-- Orchestration (issue 10, item 3): one parent job over several store connections of an org.
-- The parent is a row of woo_customer_sync_queue of kind 'orchestration' with no connection of
-- its own; each child is an ordinary sync job naming its parent in parent_id. The parent uses
-- the job states (its status, progress stream, activity log and pause/resume/cancel are those of
-- a job), reads no store and holds no lines: the tracker finishes it from its children.
ALTER TABLE woo_customer_sync_queue DROP CONSTRAINT woo_customer_sync_queue_kind_check;
ALTER TABLE woo_customer_sync_queue
    ADD CONSTRAINT woo_customer_sync_queue_kind_check
        CHECK (kind IN ('sync', 'preview', 'orchestration')),
    ALTER COLUMN connection_id DROP NOT NULL,
    ADD CONSTRAINT woo_customer_sync_queue_orchestration_connection
        CHECK ((kind = 'orchestration') = (connection_id IS NULL)),
    ADD COLUMN parent_id uuid REFERENCES woo_customer_sync_queue (id) ON DELETE SET NULL,
    ADD CONSTRAINT woo_customer_sync_queue_parent_is_sync
        CHECK (parent_id IS NULL OR kind = 'sync');
CREATE INDEX woo_customer_sync_queue_parent_idx ON woo_customer_sync_queue (parent_id)
    WHERE parent_id IS NOT NULL;

-- A parent shows no progress of its own (its children do), so it is never a stall candidate:
-- 0017's function, without parents.
CREATE OR REPLACE FUNCTION woosync_stall_candidates(p_timeout_s double precision)
RETURNS TABLE (id uuid, org_id uuid, state text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT j.id, j.org_id, j.state
    FROM woo_customer_sync_queue j
    WHERE j.state IN ('queued', 'processing')
      AND j.kind <> 'orchestration'
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
