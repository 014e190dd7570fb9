-- A request with an API key no longer writes to the database (issue 12, item 3: "no database
-- write per request"). woosync_authenticate (migration 0005) set the key's last_used_at on every
-- request: each status GET, and each progress stream's recheck, was an UPDATE of the key's row and
-- a commit that waited for its WAL flush, which under a full-speed sync made up much of a status
-- request's time, and every request of one key queued on that row's lock.
--
-- last_used_at now moves only when it is more than a minute old, so it says when the key was last
-- used to within a minute; the lookup itself is a read, and a transaction that wrote nothing
-- commits without a flush. Revoking a key still takes effect on its next request: revoked_at is
-- read by the lookup's own statement, as before.
CREATE OR REPLACE FUNCTION woosync_authenticate(p_key_hash bytea)
RETURNS TABLE (id uuid, org_id uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH key AS (
        SELECT k.id, k.org_id, k.last_used_at
        FROM api_keys AS k
        WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
    ), used AS (
        UPDATE api_keys AS k SET last_used_at = now()
        FROM key
        WHERE k.id = key.id AND k.revoked_at IS NULL
          AND (key.last_used_at IS NULL OR key.last_used_at < now() - interval '1 minute')
    )
    SELECT key.id, key.org_id FROM key
$$;
