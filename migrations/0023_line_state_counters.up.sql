-- A job's lines counted by state, kept up to date by the statements that change lines (issue 12,
-- item 4, "Big stores"). The tracker used to count a job's lines on every tick: a pass over the
-- (job_id, state) index of every line, a million for a big store, each tick and each sweep, while
-- holding the job row. It now sums a handful of counter rows instead.
--
--   * The counts stay a pure function of the lines, never of events: three statement-level
--     AFTER triggers on woo_customer_sync_queue_line (INSERT, UPDATE, DELETE) add, in the same
--     transaction as the statement, one row per (job, org, state) its rows entered (+n) or left
--     (-n). A duplicated or replayed batch changes lines only as much as it changes them, and so
--     the counters; a rolled-back statement rolls its deltas back with it. Any snapshot sees the
--     lines and the counters agree: sum(n) by state = count(*) of the lines by state.
--   * Why deltas appended, not one counter row per (job, state) updated in place: every fetcher
--     page insert and every syncer batch of a job would update the same few rows, and each such
--     row lock is held until its transaction commits, so the syncers and fetchers of a big job
--     would queue behind one another (and two transactions touching two states in different
--     orders could deadlock). Inserts never wait for one another. Striped counters would still
--     collide whenever two writers hash to one stripe, and would need as many rows per job to sum.
--   * The deltas are folded by the tracker (services/tracker/queries.py, FOLD_LINE_COUNTS): under
--     the job row's lock, one statement deletes the job's rows it sees and inserts their sums, one
--     row per state, marked folded. Concurrent writers' deltas are not yet visible to it and stay
--     as they are; a snapshot sees either the rows folded or their sum, never both. So a tick
--     reads the deltas of the statements since the previous tick plus one row per state:
--     its cost follows the job's rate, not its size.
--   * UPDATE transition tables cannot name a column (PostgreSQL refuses a column list with
--     transition tables), so the UPDATE trigger subtracts the old rows and adds the new ones per
--     state and writes only the states whose sum moved: an update that leaves states alone
--     writes nothing.
--   * The counter rows go with their job (ON DELETE CASCADE: the cleanup of 0012 removes a job
--     row last, its lines and pages first). Lines deleted together with their job (a cascade
--     from the job, its connection or its org) write no delta for a job that is gone.
--   * Org data like the lines: FORCE ROW LEVEL SECURITY, the org_isolation policy of 0005 for
--     the services' role and the operator_access policy of 0008 for the owner's sessions and
--     SECURITY DEFINER functions. The trigger function runs as whoever changes the lines, so the
--     policies check the org of every delta as they check the lines'.
--   * The lines of jobs created before this migration are counted once here, after the triggers
--     exist and in the same transaction (CREATE TRIGGER holds a lock that keeps line writes out
--     until the commit), so no line is counted twice or missed.

CREATE TABLE woo_customer_sync_line_count (
    job_id  uuid NOT NULL REFERENCES woo_customer_sync_queue (id) ON DELETE CASCADE,
    org_id  uuid NOT NULL,
    state   text NOT NULL,
    n       bigint NOT NULL,
    folded  boolean NOT NULL DEFAULT false
);
CREATE INDEX woo_customer_sync_line_count_job_idx
    ON woo_customer_sync_line_count (job_id, state);

GRANT SELECT, INSERT, DELETE ON woo_customer_sync_line_count TO woosync_app;
ALTER TABLE woo_customer_sync_line_count ENABLE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_line_count FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON woo_customer_sync_line_count
    USING (org_id = (SELECT woosync_current_org()));
CREATE POLICY operator_access ON woo_customer_sync_line_count TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));

CREATE FUNCTION woo_customer_sync_line_count_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n)
        SELECT job_id, org_id, state, count(*) FROM new_rows GROUP BY job_id, org_id, state;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n)
        SELECT job_id, org_id, state, sum(d)
        FROM (
            SELECT job_id, org_id, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT job_id, org_id, state, -1 AS d FROM old_rows
        ) AS moved
        GROUP BY job_id, org_id, state
        HAVING sum(d) <> 0;
    ELSE
        INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n)
        SELECT o.job_id, o.org_id, o.state, -count(*)
        FROM old_rows o
        WHERE EXISTS (SELECT 1 FROM woo_customer_sync_queue j WHERE j.id = o.job_id)
        GROUP BY o.job_id, o.org_id, o.state;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER woo_customer_sync_line_count_insert
    AFTER INSERT ON woo_customer_sync_queue_line
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION woo_customer_sync_line_count_delta();
CREATE TRIGGER woo_customer_sync_line_count_update
    AFTER UPDATE ON woo_customer_sync_queue_line
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION woo_customer_sync_line_count_delta();
CREATE TRIGGER woo_customer_sync_line_count_delete
    AFTER DELETE ON woo_customer_sync_queue_line
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION woo_customer_sync_line_count_delta();

INSERT INTO woo_customer_sync_line_count (job_id, org_id, state, n, folded)
SELECT job_id, org_id, state, count(*), true
FROM woo_customer_sync_queue_line
GROUP BY job_id, org_id, state;
