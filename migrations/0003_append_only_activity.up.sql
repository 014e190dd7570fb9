-- The audit log is append-only: rows are inserted, never changed or removed. The trigger binds
-- every role, the table's owner (the services' role today) included; only a deliberate schema
-- change (dropping or disabling the trigger, or this migration's down) lifts it.
CREATE FUNCTION woo_sync_activity_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'woo_sync_activity is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows can only be inserted';
END
$$;

-- Per statement, so an UPDATE or DELETE that matches no row is refused as well.
CREATE TRIGGER woo_sync_activity_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON woo_sync_activity
    FOR EACH STATEMENT EXECUTE FUNCTION woo_sync_activity_append_only();

-- No role other than the owner gets to change rows either (PUBLIC never had these privileges;
-- this states it, for a future non-owner service role).
REVOKE UPDATE, DELETE, TRUNCATE ON woo_sync_activity FROM PUBLIC;
