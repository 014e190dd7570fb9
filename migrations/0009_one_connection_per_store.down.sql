-- Back to connections unique per (org, store_url, consumer_key). Only the constraint goes back:
-- what 0009 merged stays merged. The connections it deleted, the older versions of customers it
-- dropped, the URLs it rewrote in their one spelling and the jobs it failed (they say so in
-- last_error) cannot be brought back from what the database still holds. Every remaining
-- connection is a single row per store, so the old constraint holds for them.
ALTER TABLE woo_connections DROP CONSTRAINT IF EXISTS woo_connections_one_per_store;
ALTER TABLE woo_connections DROP COLUMN IF EXISTS store_identity;
ALTER TABLE woo_connections
    ADD CONSTRAINT woo_connections_org_id_store_url_consumer_key_key
    UNIQUE (org_id, store_url, consumer_key);
