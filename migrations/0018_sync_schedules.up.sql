-- Schedules (issue 11, item 3): a store connection may have one schedule, an interval in
-- seconds or a cron expression read in a time zone, on which woosync starts a sync by itself.
--
--   * One row per connection; it goes with its connection (and its org). interval_s or cron,
--     never both; next_fire_at is when it is due next (NULL only while it is disabled).
--   * The row is org data like the rest: FORCE ROW LEVEL SECURITY, the org_isolation policy of
--     0005 for the services' role and the operator_access policy of 0008 for the owner's
--     operator sessions (`woosync schedule`) and SECURITY DEFINER functions.
--   * The scheduler (one tracker among its replicas, by advisory lock) must see every org's due
--     schedules, which row security forbids woosync_app. woosync_due_schedules() below is the
--     one read across orgs: it returns the ids and orgs of due, enabled schedules and nothing
--     else. Each fire then works as that org alone (shared/schedules.py): it locks the schedule
--     row under the org's policy, checks again that it is due, and creates the job; a second
--     scheduler (a leader that has just lost its lock) skips a row already locked and finds it
--     no longer due once the first commits, so a slot fires once.

CREATE TABLE woo_sync_schedule (
    connection_id   uuid PRIMARY KEY REFERENCES woo_connections (id) ON DELETE CASCADE,
    org_id          uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    interval_s      integer CHECK (interval_s >= 1),
    cron            text CHECK (length(cron) BETWEEN 1 AND 200),
    timezone        text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    enabled         boolean NOT NULL DEFAULT true,
    next_fire_at    timestamptz,
    last_fired_at   timestamptz,
    last_job_id     uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT woo_sync_schedule_one_kind CHECK ((interval_s IS NULL) <> (cron IS NULL)),
    CONSTRAINT woo_sync_schedule_due_when_enabled CHECK (NOT enabled OR next_fire_at IS NOT NULL)
);
CREATE INDEX woo_sync_schedule_due_idx ON woo_sync_schedule (next_fire_at) WHERE enabled;
CREATE INDEX woo_sync_schedule_org_idx ON woo_sync_schedule (org_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON woo_sync_schedule TO woosync_app;

ALTER TABLE woo_sync_schedule ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_sync_schedule FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON woo_sync_schedule
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY operator_access ON woo_sync_schedule TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));

-- The scheduler's look across orgs: which enabled schedules are due, and whose, oldest first.
CREATE FUNCTION woosync_due_schedules(p_limit int)
RETURNS TABLE (connection_id uuid, org_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT s.connection_id, s.org_id
    FROM woo_sync_schedule s
    WHERE s.enabled AND s.next_fire_at <= now()
    ORDER BY s.next_fire_at, s.connection_id
    LIMIT least(greatest(p_limit, 1), 1000)
$$;

REVOKE EXECUTE ON FUNCTION woosync_due_schedules(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION woosync_due_schedules(int) TO woosync_app;
