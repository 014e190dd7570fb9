-- Row-level security is enforced, not assumed (issue 8, items 6 and 7).
--
-- 1. FORCE ROW LEVEL SECURITY on every org table: the tables' owner is bound by the policies too,
--    unless it is a superuser or has BYPASSRLS (PostgreSQL exempts those whatever the table says).
--    A process connected as a non-superuser owner by mistake sees no org's rows.
-- 2. The owner's deliberate cross-org work goes through a second policy, `operator_access`, that
--    applies to the role running this migration (the schema's owner) alone, and only in sessions
--    that set `woosync.operator = on` (the operator commands `woosync org create`, `key`, `dlq`,
--    `secrets rotate`, and the migrations: shared.db.OPERATOR_SETTINGS), or inside the SECURITY
--    DEFINER functions of 0005 (there current_user is the owner and session_user the caller; a
--    direct session of the owner has the two equal). The policy does not name woosync_app, so
--    the services cannot turn it on for themselves (setting the variable is open to every role,
--    the policy is not), and their plans are those of 0005 alone. (A function-level
--    `SET woosync.operator` would need a superuser to create since PostgreSQL 15.)
-- 3. The api's rate limits live here rather than in one api process (shared/ratelimit.py).

ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_connections FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_page FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_customer_sync_queue_line FORCE ROW LEVEL SECURITY;
ALTER TABLE woo_sync_activity FORCE ROW LEVEL SECURITY;
ALTER TABLE customer FORCE ROW LEVEL SECURITY;

CREATE FUNCTION woosync_operator_session() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(current_setting('woosync.operator', true), '') = 'on'
        OR session_user <> current_user
$$;

CREATE POLICY operator_access ON orgs TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON api_keys TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON woo_connections TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON woo_customer_sync_queue TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON woo_customer_sync_page TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON woo_customer_sync_queue_line TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON woo_sync_activity TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));
CREATE POLICY operator_access ON customer TO CURRENT_USER
    USING ((SELECT woosync_operator_session()));

-- Rate-limit buckets shared by every api and tracker process: one row per bucket ("api:org:<id>",
-- "api:refused:<address>", ...), holding the GCRA's theoretical arrival time. Unlogged: a crash
-- forgets the buckets, which only refills them. Not org data (addresses have no org): no policy.
CREATE UNLOGGED TABLE woosync_rate_limit (
    bucket  text PRIMARY KEY,
    tat     timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON woosync_rate_limit TO woosync_app;

-- Open progress streams, leased by the tracker that serves them and renewed while they stay
-- open, so the per-org cap holds across tracker replicas; a crashed tracker's leases run out.
-- Keyed by a bucket ("org:<id>"), not org data: no policy.
CREATE UNLOGGED TABLE woosync_stream_lease (
    id          uuid PRIMARY KEY,
    bucket      text NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX woosync_stream_lease_bucket_idx ON woosync_stream_lease (bucket, expires_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON woosync_stream_lease TO woosync_app;
