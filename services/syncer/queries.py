"""SQL of the syncer: one set-based upsert for a batch of customers, one for its lines.

Both statements take their whole set at once (the customers as one array per column, read with
``unnest``; the lines as one ``jsonb`` array, read with ``jsonb_to_recordset``), ordered by
``woo_id`` so two syncers touching the same customers take their row locks in the same order and
cannot deadlock each other.
"""

from shared.conflicts import MARK_WOOSYNC_WRITER
from shared.lifecycle import (
    IN_FLIGHT_LINE_STATES,
    Actor,
    LineState,
    changes_state,
    moves,
    sql_in,
    sql_state,
)
from shared.mapping import CUSTOMER_COLUMNS

# The job must exist and belong to the org the batch names (tenant isolation). Its connection,
# not the batch's, is where the customers go: a batch queued before migration 0009 merged its
# store's connections names one that no longer exists, and the job was moved to the survivor.
# The job's state is read under a KEY SHARE lock held to the commit: a pause or cancel (which
# lock the job FOR UPDATE) waits for a batch being written, and a batch written after one sees
# it. The fetcher's and the tracker's updates of the job row do not conflict with this lock.
# With the job's conflict policy, else its connection's (shared.conflicts).
SELECT_JOB_CONNECTION = """
SELECT j.connection_id, j.state,
       COALESCE(j.conflict_policy, c.conflict_policy) AS conflict_policy
FROM woo_customer_sync_queue j
JOIN woo_connections c ON c.id = j.connection_id AND c.org_id = j.org_id
WHERE j.id = $1 AND j.org_id = $2
FOR KEY SHARE OF j
"""

# $1 org_id, $2 connection_id, $3 bigint[] woo_ids. The stored rows among them that were edited
# in MantisNXT since their last sync (the only ones that can be conflicts), with what decides a
# conflict and MantisNXT's version as it is now (what a waiting conflict line keeps), and the
# rows marked deleted (``deleted``: the only ones RESTORE_CUSTOMERS can bring back, so a batch
# without any skips it). Other rows are not returned.
# Each id is looked up by the whole primary key (LATERAL ... LIMIT 1 keeps the planner from
# flattening it): with `woo_id = ANY($3)` a planner whose statistics predate the store's first
# sync (a new connection, a table not analyzed yet) scans every stored customer of the
# connection as a filter, per batch, which makes a first sync quadratic in the store's size.
SELECT_EDITED_OR_DELETED = """
SELECT c.woo_id, c.source_hash, c.woo_date_modified, c.synced_at, c.mantis_updated_at,
       c.mantis_updated_at > c.synced_at AS edited,
       c.deleted_at IS NOT NULL AS deleted,
       CASE WHEN c.mantis_updated_at > c.synced_at
            THEN to_jsonb(c) - 'raw' - 'org_id' - 'connection_id' END AS mantis_version
FROM (SELECT DISTINCT unnest($3::bigint[]) AS woo_id) AS i
CROSS JOIN LATERAL (
    SELECT * FROM customer AS s
    WHERE s.org_id = $1 AND s.connection_id = $2 AND s.woo_id = i.woo_id
    LIMIT 1
) AS c
WHERE c.mantis_updated_at > c.synced_at OR c.deleted_at IS NOT NULL
ORDER BY c.woo_id
"""

# The syncer's transactions (a batch, a webhook's change): their writes are woosync's (migration
# 0017's trigger leaves them alone), a customer row another transaction holds past the lock
# timeout fails that row alone (see handlers), and no statement scans a whole table. Every lookup
# here is by key, but a plan cached while ``customer`` held a few rows (a new installation, a
# table just truncated) scans the table, or another index leading with org_id, once per customer
# looked up, until autovacuum's next ANALYZE: quadratic in the store's size for a first sync
# (tests/integration/test_syncer_plans.py). PostgreSQL keeps a generic plan for a prepared
# statement after five runs, so the statistics of the moment it was made decide. With sequential
# scans priced out, every lookup of a customer by its key, in any plan, generic or custom, goes
# through the primary key; the plan is kept and reused (planning each batch's statements anew,
# as force_custom_plan did, cost about a seventh of the database's CPU in
# `python -m bench.throughput`). The exceptions are below (PLAN_FOR_TABLE_AS_IS). One round trip
# (a simple query of three statements).
WRITER_SETTINGS = (
    MARK_WOOSYNC_WRITER
    + "; SET LOCAL lock_timeout = {lock_timeout_ms:d}"
    + "; SET LOCAL enable_seqscan = off"
)

# Pricing sequential scans out is not enough for a statement that joins ``customer`` to a batch
# in an UPDATE (RESTORE_CUSTOMERS, shared.conflicts.KEEP_MANTIS_VERSIONS): a generic plan made
# while the table was small hashes the batch and reads every customer of the connection through
# the primary key's prefix. Those two plan for the table as it is now; both are rare (a batch
# holding a customer marked deleted, or conflicts where MantisNXT's version is kept), so the
# hot path keeps its cached plans.
PLAN_FOR_TABLE_AS_IS = "SET LOCAL plan_cache_mode = force_custom_plan"

# A batch of a paused job, kept as it came until the job is resumed (migration 0010).
HOLD_BATCH = """
INSERT INTO woo_customer_sync_hold (job_id, org_id, attempt, batch)
VALUES ($1, $2, $3, $4)
"""

# A batch of a cancelled job is not written: its lines that are still open are settled as
# cancelled (a batch published just before the cancel, or a replay after it).
CANCEL_LINES = changes_state(
    "syncer.CANCEL_LINES",
    "line",
    {Actor.SYNCER: moves(IN_FLIGHT_LINE_STATES, (LineState.CANCELLED,))},
    f"""
UPDATE woo_customer_sync_queue_line
SET state = {sql_state(LineState.CANCELLED)}, updated_at = now()
WHERE job_id = $1 AND org_id = $2 AND woo_id = ANY($3::bigint[])
  AND state IN {sql_in(IN_FLIGHT_LINE_STATES)}
""",
)

# What each customer travels as: one array per field, $3 onwards in this order, with the type of
# its elements. services/syncer/handlers.py builds the arrays from this tuple; the statement's
# ``unnest`` below is built from it too, so the two cannot drift apart.
UPSERT_ARRAYS: tuple[tuple[str, str], ...] = (
    ("woo_id", "bigint"),
    ("email", "text"),
    ("first_name", "text"),
    ("last_name", "text"),
    ("username", "text"),
    ("role", "text"),
    ("company", "text"),
    ("phone", "text"),
    ("is_paying_customer", "boolean"),
    ("avatar_url", "text"),
    ("woo_date_created", "timestamptz"),
    ("woo_date_modified", "timestamptz"),
    ("raw_json", "text"),
    ("source_hash", "text"),
    ("clean_json", "text"),
    ("kind", "text"),
    ("guest_key", "text"),
)

# The columns of ``customer`` the upsert writes, in table order (shared.mapping's
# CUSTOMER_COLUMNS, which a test holds to the table), each with its value read from an input row
# ``r``: the same-named field unless written here.
_DERIVED_VALUES = {
    "org_id": "$1::uuid",
    "connection_id": "$2::uuid",
    "billing": "CASE WHEN jsonb_typeof(r.doc -> 'billing') = 'object' THEN r.doc -> 'billing'"
    " ELSE '{}' END",
    "shipping": "CASE WHEN jsonb_typeof(r.doc -> 'shipping') = 'object' THEN r.doc -> 'shipping'"
    " ELSE '{}' END",
    "meta_data": "CASE WHEN jsonb_typeof(r.doc -> 'meta_data') = 'array' THEN r.doc -> 'meta_data'"
    " ELSE '[]' END",
    # Parsed once: ``doc`` is raw_json itself unless the customer held NUL characters.
    "raw": "CASE WHEN r.clean_json IS NULL THEN r.doc ELSE r.raw_json::jsonb END",
}
_KEY = ("org_id", "connection_id", "woo_id")
_INDENT = ",\n        "
_ARRAYS = _INDENT.join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(UPSERT_ARRAYS, start=3))
_FIELDS = _INDENT.join(name for name, _ in UPSERT_ARRAYS)
_COLUMNS = _INDENT.join(CUSTOMER_COLUMNS)
_VALUES = _INDENT.join(_DERIVED_VALUES.get(c, f"r.{c}") for c in CUSTOMER_COLUMNS)
_UPDATES = _INDENT.join(f"{c} = EXCLUDED.{c}" for c in CUSTOMER_COLUMNS if c not in _KEY)

# $1 org_id, $2 connection_id, then the arrays of UPSERT_ARRAYS, woo_ids unique. Arrays, not one
# jsonb document: each customer travels once, as the canonical JSON text that goes into ``raw``,
# and billing, shipping and meta_data are taken from it here (objects, or empty when null or
# missing, as shared.mapping.map_customer has them); from ``clean_json`` instead when the customer
# held NUL characters (raw keeps them escaped, the columns have them removed).
# Conflicts update only when the content changed (an unchanged customer writes no new row version)
# and the payload is not older than the stored one: a replay or retry of an old payload never
# overwrites a newer version (issue 8, item 9). "Older" compares woo_date_modified (from
# date_modified_gmt): a payload modified before the stored one, or never modified while the stored
# one was, is older; equal or newer updates, and a stored row without a date takes anything.
# Returns the customers left alone as stale, with the date of the version kept. The final SELECT
# sees the rows as they were before this statement (one snapshot), which is what it compares with;
# it looks up by the whole key, as SELECT_EDITED_OR_DELETED does and for the same reason, only the
# customers the upsert did not write (none, on a first sync).
# Composed once, here, from the tuples above (print it to read it whole).
UPSERT_CUSTOMERS = f"""
WITH input AS MATERIALIZED (
    SELECT u.*, COALESCE(u.clean_json, u.raw_json)::jsonb AS doc
    FROM unnest(
        {_ARRAYS}
    ) AS u(
        {_FIELDS}
    )
), upserted AS (
    INSERT INTO customer AS c (
        {_COLUMNS}
    )
    SELECT
        {_VALUES}
    FROM input AS r
    ORDER BY r.woo_id
    ON CONFLICT (org_id, connection_id, woo_id) DO UPDATE SET
        {_UPDATES},
        updated_at = now(),
        synced_at = now()
    WHERE c.source_hash IS DISTINCT FROM EXCLUDED.source_hash
      AND (c.woo_date_modified IS NULL OR EXCLUDED.woo_date_modified >= c.woo_date_modified)
    RETURNING c.woo_id
)
SELECT i.woo_id, c.woo_date_modified AS kept_modified, i.woo_date_modified AS payload_modified
FROM (
    SELECT * FROM input AS n
    WHERE NOT EXISTS (SELECT 1 FROM upserted AS up WHERE up.woo_id = n.woo_id)
) AS i
CROSS JOIN LATERAL (
    SELECT s.source_hash, s.woo_date_modified FROM customer AS s
    WHERE s.org_id = $1 AND s.connection_id = $2 AND s.woo_id = i.woo_id
    LIMIT 1
) AS c
WHERE c.source_hash IS DISTINCT FROM i.source_hash
  AND c.woo_date_modified IS NOT NULL
  AND (i.woo_date_modified IS NULL OR i.woo_date_modified < c.woo_date_modified)
ORDER BY i.woo_id
"""

# $1 org_id, $2 connection_id, $3 job_id, $4 the woo ids this batch stored that were marked
# deleted when the batch began (SELECT_EDITED_OR_DELETED). A deletion the tracker marks meanwhile
# is newer than this job's crawl and would stay anyway; a webhook's applied meanwhile is left
# for the next sync, as one applied just after this batch's commit always was. Customers the
# tracker marked deleted (migration 0013) that a later crawl found in the store again: deleted_at
# is cleared, the job's restored_count counts them. Only a customer marked before this job's
# crawl began comes back: a replay of an older job's parked customers never undoes a deletion
# found since. Locks in woo_id order, like the upsert; each id looked up by the whole key, as in
# SELECT_EDITED_OR_DELETED. Returns the restored woo ids.
RESTORE_CUSTOMERS = """
WITH job AS (
    SELECT started_at FROM woo_customer_sync_queue WHERE id = $3 AND org_id = $1
), back AS (
    SELECT c.woo_id
    FROM (SELECT DISTINCT unnest($4::bigint[]) AS woo_id ORDER BY 1) AS i
    CROSS JOIN LATERAL (
        SELECT s.woo_id FROM customer AS s
        WHERE s.org_id = $1 AND s.connection_id = $2 AND s.woo_id = i.woo_id
          AND s.deleted_at < (SELECT started_at FROM job)
        LIMIT 1
        FOR UPDATE
    ) AS c
), restored AS (
    UPDATE customer c
    SET deleted_at = NULL, updated_at = now()
    FROM back
    WHERE c.org_id = $1 AND c.connection_id = $2 AND c.woo_id = back.woo_id
    RETURNING c.woo_id
), counted AS (
    UPDATE woo_customer_sync_queue j
    SET restored_count = j.restored_count + (SELECT count(*) FROM restored)
    WHERE j.id = $3 AND j.org_id = $1 AND EXISTS (SELECT 1 FROM restored)
)
SELECT woo_id FROM restored ORDER BY woo_id
"""

# $1 job_id, $2 org_id, $3: jsonb array of {woo_id, state, error, warning, payload,
# mantis_version}, woo_ids unique. Every line this delivery settled, whatever its outcome: done
# clears the error and the kept payload and records the warning, if any (NUL removed, stale
# payload left alone, a conflict a policy settled); processing (a retry is on its way) records
# the error; failed (parked) keeps the raw customer so an operator's retry can resend it;
# conflict keeps the store's customer and MantisNXT's row. A line already done, or waiting as a
# conflict (only a person settles it), is never touched, so a redelivered or replayed batch
# changes nothing; a line the fetcher never recorded (replays) is created. A line of another org
# is left alone.
SETTLE_LINES = changes_state(
    "syncer.SETTLE_LINES",
    "line",
    {
        Actor.SYNCER: moves(
            (None, LineState.PENDING, LineState.PROCESSING, LineState.FAILED),
            (LineState.DONE, LineState.PROCESSING, LineState.FAILED, LineState.CONFLICT),
        )
    },
    f"""
INSERT INTO woo_customer_sync_queue_line AS l (
    job_id, woo_id, org_id, state, attempts, last_error, warning, payload, mantis_version
)
SELECT $1, x.woo_id, $2, x.state, 1, x.error, x.warning, x.payload, x.mantis_version
FROM jsonb_to_recordset($3::jsonb)
     AS x(woo_id bigint, state text, error text, warning text, payload jsonb,
          mantis_version jsonb)
ORDER BY x.woo_id
ON CONFLICT (job_id, woo_id) DO UPDATE SET
    state = EXCLUDED.state,
    attempts = l.attempts + 1,
    last_error = EXCLUDED.last_error,
    warning = EXCLUDED.warning,
    payload = EXCLUDED.payload,
    mantis_version = EXCLUDED.mantis_version,
    updated_at = now()
WHERE l.state NOT IN {sql_in({LineState.DONE, LineState.CANCELLED, LineState.CONFLICT})}
  AND l.org_id = EXCLUDED.org_id
""",
)

# -- webhook changes (services/syncer/changes.py) -------------------------------------------------

# The connection a change names must exist for the org the change names (tenant isolation).
SELECT_CONNECTION = "SELECT 1 FROM woo_connections WHERE id = $1 AND org_id = $2"

# The stored customer's version and deletion, locked for the rest of the change's transaction so
# two deliveries of the same customer apply one after the other.
LOCK_CUSTOMER = """
SELECT woo_date_modified, deleted_at FROM customer
WHERE org_id = $1 AND connection_id = $2 AND woo_id = $3
FOR UPDATE
"""

# customer.deleted: mark the row deleted at $4 (when the delivery was received), unless it is
# already deleted or its stored version is newer than the delete. Returns the row when it did.
SOFT_DELETE_CUSTOMER = """
UPDATE customer SET deleted_at = $4, updated_at = now(), synced_at = now()
WHERE org_id = $1 AND connection_id = $2 AND woo_id = $3
  AND deleted_at IS NULL
  AND (woo_date_modified IS NULL OR woo_date_modified <= $4)
RETURNING woo_id
"""

# A version newer than the row's deletion (the store has the customer again): live again.
UNDELETE_CUSTOMER = """
UPDATE customer SET deleted_at = NULL
WHERE org_id = $1 AND connection_id = $2 AND woo_id = $3 AND deleted_at IS NOT NULL
"""
