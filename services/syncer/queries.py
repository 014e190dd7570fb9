"""SQL of the syncer: one set-based upsert for a batch of customers, one for its lines.

Both statements take their whole set at once (the customers as one array per column, read with
``unnest``; the lines as one ``jsonb`` array, read with ``jsonb_to_recordset``), ordered by
``woo_id`` so two syncers touching the same customers take their row locks in the same order and
cannot deadlock each other.
"""

from shared.lifecycle import Actor, LineState, changes_state, moves, sql_state

# The job must exist and belong to the org the batch names (tenant isolation). Its connection,
# not the batch's, is where the customers go: a batch queued before migration 0009 merged its
# store's connections names one that no longer exists, and the job was moved to the survivor.
SELECT_JOB_CONNECTION = """
SELECT connection_id FROM woo_customer_sync_queue
WHERE id = $1 AND org_id = $2
"""

# $1 org_id, $2 connection_id, then one array per column ($3 woo_id .. $17 clean_json, in the
# order of UPSERT_COLUMNS in services/syncer/handlers.py), woo_ids unique. Arrays, not one jsonb
# document: each customer travels once, as the canonical JSON text that goes into ``raw``, and
# billing, shipping and meta_data are taken from it here (objects, or empty when null or missing,
# as shared.mapping.map_customer has them); from ``clean_json`` instead when the customer held NUL
# characters (raw keeps them escaped, the columns have them removed).
# Conflicts update only when the content changed (an unchanged customer writes no new row version)
# and the payload is not older than the stored one: a replay or retry of an old payload never
# overwrites a newer version (issue 8, item 9). "Older" compares woo_date_modified (from
# date_modified_gmt): a payload modified before the stored one, or never modified while the stored
# one was, is older; equal or newer updates, and a stored row without a date takes anything.
# Returns the customers left alone as stale, with the date of the version kept. The final SELECT
# sees the rows as they were before this statement (one snapshot), which is what it compares with.
UPSERT_CUSTOMERS = """
WITH input AS MATERIALIZED (
    SELECT u.*, COALESCE(u.clean_json, u.raw_json)::jsonb AS doc
    FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::text[], $11::boolean[], $12::text[], $13::timestamptz[],
                $14::timestamptz[], $15::text[], $16::text[], $17::text[])
         AS u(woo_id, email, first_name, last_name, username, role, company, phone,
              is_paying_customer, avatar_url, woo_date_created, woo_date_modified, raw_json,
              source_hash, clean_json)
), upserted AS (
    INSERT INTO customer AS c (
        org_id, connection_id, woo_id, email, first_name, last_name, username, role, company,
        phone, billing, shipping, meta_data, is_paying_customer, avatar_url, woo_date_created,
        woo_date_modified, raw, source_hash
    )
    SELECT $1::uuid, $2::uuid, r.woo_id, r.email, r.first_name, r.last_name, r.username, r.role,
           r.company, r.phone,
           CASE WHEN jsonb_typeof(r.doc -> 'billing') = 'object' THEN r.doc -> 'billing'
                ELSE '{}' END,
           CASE WHEN jsonb_typeof(r.doc -> 'shipping') = 'object' THEN r.doc -> 'shipping'
                ELSE '{}' END,
           CASE WHEN jsonb_typeof(r.doc -> 'meta_data') = 'array' THEN r.doc -> 'meta_data'
                ELSE '[]' END,
           r.is_paying_customer, r.avatar_url, r.woo_date_created, r.woo_date_modified,
           r.raw_json::jsonb, r.source_hash
    FROM input AS r
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
      AND (c.woo_date_modified IS NULL OR EXCLUDED.woo_date_modified >= c.woo_date_modified)
    RETURNING c.woo_id
)
SELECT i.woo_id, c.woo_date_modified AS kept_modified, i.woo_date_modified AS payload_modified
FROM input AS i
JOIN customer AS c ON c.org_id = $1 AND c.connection_id = $2 AND c.woo_id = i.woo_id
WHERE c.source_hash IS DISTINCT FROM i.source_hash
  AND c.woo_date_modified IS NOT NULL
  AND (i.woo_date_modified IS NULL OR i.woo_date_modified < c.woo_date_modified)
  AND NOT EXISTS (SELECT 1 FROM upserted AS up WHERE up.woo_id = i.woo_id)
ORDER BY i.woo_id
"""

# $1 job_id, $2 org_id, $3: jsonb array of {woo_id, state, error, warning, payload}, woo_ids
# unique. Every line this delivery settled, whatever its outcome: done clears the error and the
# kept payload and records the warning, if any (NUL removed, stale payload left alone);
# processing (a retry is on its way) records the error; failed (parked) keeps the
# raw customer so an operator's retry can resend it. A line already done is never touched, so
# a redelivered or replayed batch changes nothing; a line the fetcher never recorded (replays)
# is created. A line of another org is left alone.
SETTLE_LINES = changes_state(
    "syncer.SETTLE_LINES",
    "line",
    {
        Actor.SYNCER: moves(
            (None, LineState.PENDING, LineState.PROCESSING, LineState.FAILED),
            (LineState.DONE, LineState.PROCESSING, LineState.FAILED),
        )
    },
    f"""
INSERT INTO woo_customer_sync_queue_line AS l (
    job_id, woo_id, org_id, state, attempts, last_error, warning, payload
)
SELECT $1, x.woo_id, $2, x.state, 1, x.error, x.warning, x.payload
FROM jsonb_to_recordset($3::jsonb)
     AS x(woo_id bigint, state text, error text, warning text, payload jsonb)
ORDER BY x.woo_id
ON CONFLICT (job_id, woo_id) DO UPDATE SET
    state = EXCLUDED.state,
    attempts = l.attempts + 1,
    last_error = EXCLUDED.last_error,
    warning = EXCLUDED.warning,
    payload = EXCLUDED.payload,
    updated_at = now()
WHERE l.state <> {sql_state(LineState.DONE)} AND l.org_id = EXCLUDED.org_id
""",
)
