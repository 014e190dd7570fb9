-- Adaptive per-store concurrency (shared/storelimit.py). A job started without a concurrency
-- option has none: the fetcher finds what its store sustains, starting from what it learned
-- last time, and shares that limit with every fetcher reading the same store.
ALTER TABLE woo_customer_sync_queue ALTER COLUMN concurrency DROP NOT NULL;

-- What each store sustains, one row per store whichever orgs connect to it: the store is the
-- server whose capacity is measured. Keyed by a SHA-256 of the store's identity (its normalized
-- URL without the scheme, shared.storeurl), so no org's store address is readable here. Not org
-- data: no policy. Logged: a store's limit is remembered across restarts.
CREATE TABLE woosync_store_limit (
    store         text PRIMARY KEY,
    concurrency   int NOT NULL CHECK (concurrency >= 1),
    paused_until  timestamptz,  -- the store's latest Retry-After, for every fetcher
    updated_at    timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON woosync_store_limit TO woosync_app;

-- The share of a store's limit each fetcher process holds, renewed while it reads the store;
-- the shares of one store add up to at most its limit. A fetcher that dies leaves a lease that
-- runs out. Unlogged: a crash forgets leases, which only frees their slots.
CREATE UNLOGGED TABLE woosync_store_lease (
    id          uuid PRIMARY KEY,
    store       text NOT NULL,
    slots       int NOT NULL CHECK (slots >= 0),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX woosync_store_lease_store_idx ON woosync_store_lease (store);
GRANT SELECT, INSERT, UPDATE, DELETE ON woosync_store_lease TO woosync_app;
