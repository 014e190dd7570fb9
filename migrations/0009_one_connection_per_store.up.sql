-- A store connection is the org's link to one store, whatever key or auth mode reaches it.
-- Until now connections were unique per (org, store_url, consumer_key), and customers are keyed
-- by (org, connection, woo_id): a sync with a rotated key made a second connection and a second
-- copy of every customer. This migration
--   1. writes every store_url in the one spelling of shared/storeurl.py (scheme and host in lower
--      case, IDNA host, no default port, no trailing slash),
--   2. merges the connections of one org and one store (the URL without its scheme: http and
--      https of one host, port and path are one store) into the most recently updated one, whose
--      credentials are the latest,
--   3. keeps each customer of a merged store once, in its newest version (woo_date_modified,
--      then synced_at), under the surviving connection,
--   4. makes (org_id, store_identity) unique, so the api's start updates the key, secret, auth
--      mode and verify_tls of the store's one connection instead of adding another.
--
-- Jobs of merged connections move to the survivor. Migration 0002 lets one job per connection
-- read its store; two merged connections may each have one reading now. The most recently
-- created of them keeps reading, the others are failed with a last_error saying why (an
-- activity row records it); `retry` resumes such a job once the other has read its store.
--
-- The migration runs as the schema's owner. Should the org tables force row-level security on
-- their owner (FORCE ROW LEVEL SECURITY), the owner would see no org here, and nothing would be
-- merged: forcing is lifted for this transaction and put back at its end.

CREATE TEMP TABLE _woosync_forced ON COMMIT DROP AS
SELECT c.oid::regclass AS tbl
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relname IN ('woo_connections', 'woo_customer_sync_queue', 'customer', 'woo_sync_activity')
  AND c.relforcerowsecurity;

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT tbl FROM _woosync_forced LOOP
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.tbl);
    END LOOP;
END
$$;

-- RFC 3492 Punycode of one label (the part after "xn--"), as Python's idna package writes it.
CREATE FUNCTION pg_temp.woosync_punycode(input text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    cps int[] := ARRAY(SELECT ascii(c) FROM unnest(string_to_array(input, NULL)) AS c);
    total int := cardinality(cps);
    output text := '';
    n int := 128;
    delta bigint := 0;
    bias int := 72;
    b int;
    h int;
    m int;
    q bigint;
    k int;
    t int;
    cp int;
    d int;
BEGIN
    FOREACH cp IN ARRAY cps LOOP
        IF cp < 128 THEN
            output := output || chr(cp);
        END IF;
    END LOOP;
    b := length(output);
    h := b;
    IF b > 0 THEN
        output := output || '-';
    END IF;
    WHILE h < total LOOP
        SELECT min(c) INTO m FROM unnest(cps) AS c WHERE c >= n;
        delta := delta + (m - n)::bigint * (h + 1);
        n := m;
        FOREACH cp IN ARRAY cps LOOP
            IF cp < n THEN
                delta := delta + 1;
            END IF;
            IF cp = n THEN
                q := delta;
                k := 36;
                LOOP
                    t := CASE WHEN k <= bias THEN 1 WHEN k >= bias + 26 THEN 26 ELSE k - bias END;
                    EXIT WHEN q < t;
                    d := t + (q - t) % (36 - t);
                    output := output || chr(CASE WHEN d < 26 THEN 97 + d ELSE 22 + d END);
                    q := (q - t) / (36 - t);
                    k := k + 36;
                END LOOP;
                output := output || chr(CASE WHEN q < 26 THEN 97 + q ELSE 22 + q END::int);
                -- adapt(delta, h + 1, first time)
                delta := CASE WHEN h = b THEN delta / 700 ELSE delta / 2 END;
                delta := delta + delta / (h + 1);
                k := 0;
                WHILE delta > 455 LOOP
                    delta := delta / 35;
                    k := k + 36;
                END LOOP;
                bias := k + (36 * delta) / (delta + 38);
                delta := 0;
                h := h + 1;
            END IF;
        END LOOP;
        delta := delta + 1;
        n := n + 1;
    END LOOP;
    RETURN output;
END
$$;

CREATE FUNCTION pg_temp.woosync_lower(input text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    -- Unicode case rules whatever the database's ctype is (a "C" database lowers ASCII only).
    RETURN lower(input COLLATE "und-x-icu");
EXCEPTION WHEN undefined_object THEN
    RETURN lower(input);
END
$$;

-- shared.storeurl.normalize_store_url as far as SQL can follow it. A value that is not an
-- http(s) URL (the api never stored one) is left as it is.
CREATE FUNCTION pg_temp.woosync_normalize_store_url(url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    parts text[] := regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)$');
    scheme text;
    netloc text;
    host text;
    port text;
    label text;
    labels text[] := '{}';
BEGIN
    IF parts IS NULL OR lower(parts[1]) NOT IN ('http', 'https') THEN
        RETURN url;
    END IF;
    scheme := lower(parts[1]);
    netloc := parts[2];
    IF netloc LIKE '[%' THEN
        host := substring(netloc FROM '^\[[^]]*\]');
        port := substring(netloc FROM '^\[[^]]*\]:([0-9]*)$');
        BEGIN
            host := '[' || host(btrim(host, '[]')::inet) || ']';
        EXCEPTION WHEN OTHERS THEN
            host := lower(host);
        END;
    ELSE
        host := substring(netloc FROM '^[^:]*');
        port := substring(netloc FROM ':([0-9]*)$');
        FOREACH label IN ARRAY string_to_array(host, '.') LOOP
            IF octet_length(label) = length(label) THEN  -- ASCII
                labels := labels || lower(label);
            ELSE
                labels := labels
                    || ('xn--' || pg_temp.woosync_punycode(
                        pg_temp.woosync_lower(normalize(label, NFC))));
            END IF;
        END LOOP;
        host := array_to_string(labels, '.');
    END IF;
    IF port IS NOT NULL AND port <> '' THEN
        IF (scheme, port::int) NOT IN (('http', 80), ('https', 443)) THEN
            host := host || ':' || port::int::text;
        END IF;
    END IF;
    RETURN scheme || '://' || host || rtrim(parts[3], '/');
END
$$;

ALTER TABLE woo_connections DROP CONSTRAINT woo_connections_org_id_store_url_consumer_key_key;

-- updated_at is left alone: it picks the survivor below.
UPDATE woo_connections
SET store_url = pg_temp.woosync_normalize_store_url(store_url)
WHERE store_url IS DISTINCT FROM pg_temp.woosync_normalize_store_url(store_url);

-- Every connection of a store that has more than one, with the connection that survives.
CREATE TEMP TABLE _woosync_merge ON COMMIT DROP AS
SELECT id AS connection_id, org_id, consumer_key, store_url, survivor_id
FROM (
    SELECT c.id, c.org_id, c.consumer_key, c.store_url,
           first_value(c.id) OVER store AS survivor_id,
           count(*) OVER store AS connections
    FROM woo_connections c
    WINDOW store AS (
        PARTITION BY c.org_id, regexp_replace(c.store_url, '^[^:/]*://', '')
        ORDER BY c.updated_at DESC, c.created_at DESC, c.id DESC
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
) AS grouped
WHERE connections > 1;

-- One job per store may read it (migration 0002): of the merged connections' jobs still reading
-- their store, the most recently created keeps reading; the others fail, saying why.
CREATE TEMP TABLE _woosync_failed_jobs ON COMMIT DROP AS
SELECT id AS job_id, org_id, connection_id, kept_job_id, state
FROM (
    SELECT j.id, j.org_id, j.connection_id, j.state,
           first_value(j.id) OVER store AS kept_job_id
    FROM woo_customer_sync_queue j
    JOIN _woosync_merge m ON m.connection_id = j.connection_id AND m.org_id = j.org_id
    WHERE j.state IN ('draft', 'queued', 'processing') AND j.fetch_done_at IS NULL
    WINDOW store AS (
        PARTITION BY m.survivor_id ORDER BY j.created_at DESC, j.id DESC
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
) AS reading
WHERE id <> kept_job_id;

UPDATE woo_customer_sync_queue j
SET state = 'failed',
    finished_at = now(),
    updated_at = now(),
    last_error = 'stopped by migration 0009: the store connections of this job and of job '
        || f.kept_job_id || ' (another key for the same store) were merged, and one job per '
        || 'store reads it; retry this job once that job has read the store'
FROM _woosync_failed_jobs f
WHERE j.id = f.job_id;

INSERT INTO woo_sync_activity (job_id, org_id, level, event, details)
SELECT job_id, org_id, 'warning', 'job.failed',
       jsonb_build_object(
           'by', 'migration 0009', 'reason', 'store connections merged',
           'previous_state', state, 'state', 'failed', 'reading_job_id', kept_job_id
       )
FROM _woosync_failed_jobs;

UPDATE woo_customer_sync_queue j
SET connection_id = m.survivor_id
FROM _woosync_merge m
WHERE j.connection_id = m.connection_id AND j.org_id = m.org_id
  AND m.connection_id <> m.survivor_id;

-- Each customer of a merged store once: its newest version (a row never modified counts as
-- oldest), then the most recently synced, then the survivor's own row.
DELETE FROM customer c
USING (
    SELECT c.org_id, c.connection_id, c.woo_id,
           row_number() OVER (
               PARTITION BY c.org_id, m.survivor_id, c.woo_id
               ORDER BY c.woo_date_modified DESC NULLS LAST, c.synced_at DESC,
                        (c.connection_id = m.survivor_id) DESC, c.connection_id
           ) AS rank
    FROM customer c
    JOIN _woosync_merge m ON m.connection_id = c.connection_id AND m.org_id = c.org_id
) AS ranked
WHERE ranked.rank > 1
  AND c.org_id = ranked.org_id AND c.connection_id = ranked.connection_id
  AND c.woo_id = ranked.woo_id;

UPDATE customer c
SET connection_id = m.survivor_id
FROM _woosync_merge m
WHERE c.connection_id = m.connection_id AND c.org_id = m.org_id
  AND m.connection_id <> m.survivor_id;

-- The audit trail names what became of each merged connection (its key, never its secret).
INSERT INTO woo_sync_activity (job_id, org_id, level, event, details)
SELECT NULL, org_id, 'info', 'connection.merged',
       jsonb_build_object(
           'by', 'migration 0009', 'connection_id', survivor_id,
           'merged_connection_id', connection_id, 'merged_consumer_key', consumer_key,
           'store_url', store_url
       )
FROM _woosync_merge
WHERE connection_id <> survivor_id;

DELETE FROM woo_connections c
USING _woosync_merge m
WHERE c.id = m.connection_id AND m.connection_id <> m.survivor_id;

-- The store a connection reaches: its URL without the scheme (shared.storeurl.store_identity).
ALTER TABLE woo_connections
    ADD COLUMN store_identity text NOT NULL
        GENERATED ALWAYS AS (regexp_replace(store_url, '^[^:/]*://', '')) STORED,
    ADD CONSTRAINT woo_connections_one_per_store UNIQUE (org_id, store_identity);

DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT tbl FROM _woosync_forced LOOP
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.tbl);
    END LOOP;
END
$$;

DROP FUNCTION pg_temp.woosync_normalize_store_url(text);
DROP FUNCTION pg_temp.woosync_lower(text);
DROP FUNCTION pg_temp.woosync_punycode(text);
