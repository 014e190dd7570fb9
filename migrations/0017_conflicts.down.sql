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
$$;

-- Lines waiting as conflicts go back to pending with their store payload (a retry resends them).
UPDATE woo_customer_sync_queue_line SET state = 'pending', updated_at = now()
WHERE state = 'conflict';

DO $$
DECLARE
    v_states text[];
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO v_states
    FROM pg_constraint,
         regexp_matches(pg_get_constraintdef(oid), '''([a-z_]+)''', 'g') AS m
    WHERE conname = 'woo_customer_sync_queue_line_state_check';
    ALTER TABLE woo_customer_sync_queue_line DROP CONSTRAINT woo_customer_sync_queue_line_state_check;
    EXECUTE format(
        'ALTER TABLE woo_customer_sync_queue_line ADD CONSTRAINT '
        'woo_customer_sync_queue_line_state_check CHECK (state IN (%s))',
        (SELECT string_agg(quote_literal(s), ', ')
         FROM unnest(array_remove(v_states, 'conflict')) AS s)
    );
END
$$;

ALTER TABLE woo_customer_sync_queue_line DROP COLUMN mantis_version;
ALTER TABLE woo_customer_sync_queue DROP COLUMN conflict_policy;
ALTER TABLE woo_connections DROP COLUMN conflict_policy;
DROP TRIGGER customer_mantis_edit ON customer;
DROP FUNCTION woosync_stamp_mantis_edit();
ALTER TABLE customer DROP COLUMN mantis_updated_at;
