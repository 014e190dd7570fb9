-- Conflicts (issue 10, item 4): a customer edited in MantisNXT since its last sync, whose store
-- version changed too, is a conflict; a policy decides who wins (shared/conflicts.py).
--
-- customer.mantis_updated_at is when the row was last changed by anything other than woosync.
-- woosync's own writes (the syncer, and the api resolving a conflict) name themselves in their
-- transaction with set_config('woosync.writer', 'syncer', true); the trigger below stamps every
-- other UPDATE that changes the row. It is a convention between trusted writers, not a security
-- boundary: MantisNXT does not set it, so its edits are seen.
ALTER TABLE customer ADD COLUMN mantis_updated_at timestamptz;

CREATE FUNCTION woosync_stamp_mantis_edit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('woosync.writer', true) IS DISTINCT FROM 'syncer'
       AND ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW.mantis_updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER customer_mantis_edit BEFORE UPDATE ON customer
    FOR EACH ROW EXECUTE FUNCTION woosync_stamp_mantis_edit();

-- The policy of a store connection, and a job's own (null: the connection's).
ALTER TABLE woo_connections ADD COLUMN conflict_policy text NOT NULL DEFAULT 'woo_wins'
    CONSTRAINT woo_connections_conflict_policy_check
    CHECK (conflict_policy IN ('woo_wins', 'mantis_wins', 'newest_wins', 'manual'));
ALTER TABLE woo_customer_sync_queue ADD COLUMN conflict_policy text
    CONSTRAINT woo_customer_sync_queue_conflict_policy_check
    CHECK (conflict_policy IN ('woo_wins', 'mantis_wins', 'newest_wins', 'manual'));

-- A line waiting as 'conflict' keeps both versions: the store's customer in payload, MantisNXT's
-- row as it was when the conflict was found here.
ALTER TABLE woo_customer_sync_queue_line ADD COLUMN mantis_version jsonb;

-- The line state 'conflict' joins whatever states the CHECK allows (built from the constraint
-- itself, so the order in which migrations add states does not matter).
DO $$
DECLARE
    v_states text[];
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO v_states
    FROM pg_constraint,
         regexp_matches(pg_get_constraintdef(oid), '''([a-z_]+)''', 'g') AS m
    WHERE conname = 'woo_customer_sync_queue_line_state_check';
    v_states := array_append(array_remove(v_states, 'conflict'), 'conflict');
    ALTER TABLE woo_customer_sync_queue_line DROP CONSTRAINT woo_customer_sync_queue_line_state_check;
    EXECUTE format(
        'ALTER TABLE woo_customer_sync_queue_line ADD CONSTRAINT '
        'woo_customer_sync_queue_line_state_check CHECK (state IN (%s))',
        (SELECT string_agg(quote_literal(s), ', ') FROM unnest(v_states) AS s)
    );
END
$$;

-- A job whose every page is read and whose only unsettled lines wait as conflicts waits for a
-- person, not for a service: it is no stall candidate (services/tracker/queries.py STALL_JOB has
-- the same condition).
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
