"""SQL of the syncer: one set-based upsert for a batch of customers, one for its lines.

Both statements take their whole set as one ``jsonb`` array and read it with
``jsonb_to_recordset``, ordered by ``woo_id`` so two syncers touching the same customers take
their row locks in the same order and cannot deadlock each other.
"""

# The job must exist and belong to the org and connection the batch names (tenant isolation).
SELECT_JOB = """
SELECT 1 FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2 AND connection_id = $3
"""

# $1: jsonb array of shared.mapping.row_as_json objects, woo_ids unique.
# An unchanged customer (same source_hash) matches the conflict but fails the WHERE, so no new
# row version is written. Text goes through the varchar columns, so the database still enforces
# every length limit even if the mapping were to let one through.
UPSERT_CUSTOMERS = """
INSERT INTO customer AS c (
    org_id, connection_id, woo_id, email, first_name, last_name, username, role, company, phone,
    billing, shipping, meta_data, is_paying_customer, avatar_url, woo_date_created,
    woo_date_modified, raw, source_hash
)
SELECT r.org_id, r.connection_id, r.woo_id, r.email, r.first_name, r.last_name, r.username,
       r.role, r.company, r.phone, r.billing, r.shipping, r.meta_data, r.is_paying_customer,
       r.avatar_url, r.woo_date_created, r.woo_date_modified, r.raw, r.source_hash
FROM jsonb_to_recordset($1::jsonb) AS r(
    org_id uuid, connection_id uuid, woo_id bigint, email text, first_name text,
    last_name text, username text, role text, company text, phone text, billing jsonb,
    shipping jsonb, meta_data jsonb, is_paying_customer boolean, avatar_url text,
    woo_date_created timestamptz, woo_date_modified timestamptz, raw jsonb, source_hash text
)
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
