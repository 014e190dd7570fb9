"""SQL of the syncer: one set-based upsert for a batch of customers, one for its lines.

Both statements take their whole set at once (the customers as one array per column, read with
``unnest``; the lines as one ``jsonb`` array, read with ``jsonb_to_recordset``), ordered by
``woo_id`` so two syncers touching the same customers take their row locks in the same order and
cannot deadlock each other.
"""

# The job must exist and belong to the org and connection the batch names (tenant isolation).
SELECT_JOB = """
SELECT 1 FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2 AND connection_id = $3
"""

# $1 org_id, $2 connection_id, then one array per column ($3 woo_id .. $16 source_hash, in the
# order of UPSERT_COLUMNS in services/syncer/handlers.py), woo_ids unique. Arrays, not one jsonb
# document: each customer travels once, as the canonical JSON text that source_hash hashes, and
# billing, shipping and meta_data are taken from it here (objects, or empty when null or missing,
# as shared.mapping.map_customer has them).
# An unchanged customer (same source_hash) matches the conflict but fails the WHERE, so no new
# row version is written. Text goes through the varchar columns, so the database still enforces
# every length limit even if the mapping were to let one through.
UPSERT_CUSTOMERS = """
INSERT INTO customer AS c (
    org_id, connection_id, woo_id, email, first_name, last_name, username, role, company, phone,
    billing, shipping, meta_data, is_paying_customer, avatar_url, woo_date_created,
    woo_date_modified, raw, source_hash
)
SELECT $1::uuid, $2::uuid, r.woo_id, r.email, r.first_name, r.last_name, r.username, r.role,
       r.company, r.phone,
       CASE WHEN jsonb_typeof(r.raw -> 'billing') = 'object' THEN r.raw -> 'billing'
            ELSE '{}' END,
       CASE WHEN jsonb_typeof(r.raw -> 'shipping') = 'object' THEN r.raw -> 'shipping'
            ELSE '{}' END,
       CASE WHEN jsonb_typeof(r.raw -> 'meta_data') = 'array' THEN r.raw -> 'meta_data'
            ELSE '[]' END,
       r.is_paying_customer, r.avatar_url, r.woo_date_created, r.woo_date_modified, r.raw,
       r.source_hash
FROM (
    SELECT u.*, u.raw_json::jsonb AS raw
    FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::text[], $11::boolean[], $12::text[], $13::timestamptz[],
                $14::timestamptz[], $15::text[], $16::text[])
         AS u(woo_id, email, first_name, last_name, username, role, company, phone,
              is_paying_customer, avatar_url, woo_date_created, woo_date_modified, raw_json,
              source_hash)
) AS r
ORDER BY r.woo_id
ON CONFLICT (org_id, connection_id, woo_id) DO UPDATE SET
    email = EXCLUDED.email,
    first_name = EXCLUDED.first_name,
    last_name = EXCLUDED.last_name,
    username = EXCLUDED.username,
    role = EXCLUDED.role,
    company = EXCLUDED.company,
    phone = EXCLUDED.phone,
    billing = EXCLUDED.billing,
    shipping = EXCLUDED.shipping,
    meta_data = EXCLUDED.meta_data,
    is_paying_customer = EXCLUDED.is_paying_customer,
    avatar_url = EXCLUDED.avatar_url,
    woo_date_created = EXCLUDED.woo_date_created,
    woo_date_modified = EXCLUDED.woo_date_modified,
    raw = EXCLUDED.raw,
    source_hash = EXCLUDED.source_hash,
    updated_at = now(),
    synced_at = now()
WHERE c.source_hash IS DISTINCT FROM EXCLUDED.source_hash
"""

# $1 job_id, $2 org_id, $3: jsonb array of {woo_id, state, error, payload}, woo_ids unique.
# Every line this delivery settled, whatever its outcome: 'done' clears the error and the kept
# payload; 'processing' (a retry is on its way) records the error; 'failed' (parked) keeps the
# raw customer so an operator's retry can resend it. A line already 'done' is never touched, so
# a redelivered or replayed batch changes nothing; a line the fetcher never recorded (replays)
# is created. A line of another org is left alone.
SETTLE_LINES = """
INSERT INTO woo_customer_sync_queue_line AS l (
    job_id, woo_id, org_id, state, attempts, last_error, payload
)
SELECT $1, x.woo_id, $2, x.state, 1, x.error, x.payload
FROM jsonb_to_recordset($3::jsonb) AS x(woo_id bigint, state text, error text, payload jsonb)
ORDER BY x.woo_id
ON CONFLICT (job_id, woo_id) DO UPDATE SET
    state = EXCLUDED.state,
    attempts = l.attempts + 1,
    last_error = EXCLUDED.last_error,
    payload = EXCLUDED.payload,
    updated_at = now()
WHERE l.state <> 'done' AND l.org_id = EXCLUDED.org_id
"""
