CREATE OR REPLACE FUNCTION woosync_authenticate(p_key_hash bytea)
RETURNS TABLE (id uuid, org_id uuid)
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE api_keys SET last_used_at = now()
    WHERE key_hash = p_key_hash AND revoked_at IS NULL
    RETURNING id, org_id
$$;
