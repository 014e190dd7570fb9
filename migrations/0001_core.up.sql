-- Tenants, their API keys and their store connections.
CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT 'default',
    key_hash      bytea NOT NULL UNIQUE,        -- sha256 of the key; the key itself is shown once
    key_prefix    text NOT NULL,                -- first characters, to recognise a key in lists
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id);

CREATE TABLE woo_connections (
    id                      uuid PRIMARY KEY,
    org_id                  uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    store_url               text NOT NULL,
    auth_mode               text NOT NULL CHECK (auth_mode IN ('basic', 'query', 'oauth1')),
    verify_tls              boolean NOT NULL DEFAULT true,
    consumer_key            text NOT NULL,
    consumer_secret_enc     bytea NOT NULL,     -- Fernet token; key derived from WOOSYNC_SECRET_KEY
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, store_url, consumer_key)
);

-- One row per sync job.
CREATE TABLE woo_customer_sync_queue (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    connection_id    uuid NOT NULL REFERENCES woo_connections (id),
    state            text NOT NULL DEFAULT 'draft'
                     CHECK (state IN ('draft', 'queued', 'processing', 'done', 'failed')),
    idempotency_key  text,
    batch_size       int NOT NULL CHECK (batch_size BETWEEN 1 AND 100),
    concurrency      int NOT NULL CHECK (concurrency BETWEEN 1 AND 16),
    store_total      int,                       -- X-WP-Total as first seen
    total            int NOT NULL DEFAULT 0,    -- lines recorded
    done_count       int NOT NULL DEFAULT 0,
    failed_count     int NOT NULL DEFAULT 0,
    process_count    int NOT NULL DEFAULT 0,    -- how many times a fetcher took the job up
    pages_total      int,
    fetch_done_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    UNIQUE (org_id, idempotency_key)
);
CREATE INDEX woo_customer_sync_queue_org_idx ON woo_customer_sync_queue (org_id, created_at DESC);
CREATE INDEX woo_customer_sync_queue_active_idx ON woo_customer_sync_queue (state)
    WHERE state IN ('queued', 'processing');

-- Pages of a job already read from the store, so a redelivered sync.requested resumes.
CREATE TABLE woo_customer_sync_page (
    job_id       uuid NOT NULL REFERENCES woo_customer_sync_queue (id) ON DELETE CASCADE,
    page         int NOT NULL CHECK (page >= 1),
    customers    int NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, page)
);

-- One row per customer per job.
CREATE TABLE woo_customer_sync_queue_line (
    job_id       uuid NOT NULL REFERENCES woo_customer_sync_queue (id) ON DELETE CASCADE,
    woo_id       bigint NOT NULL,
    org_id       uuid NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'processing', 'done', 'failed')),
    page         int,
    attempts     int NOT NULL DEFAULT 0,
    last_error   text,
    payload      jsonb,                         -- kept only while failed, so `retry` can resend it
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, woo_id)
);
CREATE INDEX woo_customer_sync_queue_line_state_idx ON woo_customer_sync_queue_line (job_id, state);

-- Append-only audit log.
CREATE TABLE woo_sync_activity (
    id        bigserial PRIMARY KEY,
    job_id    uuid,
    org_id    uuid NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    level     text NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error')),
    event     text NOT NULL,
    details   jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX woo_sync_activity_job_idx ON woo_sync_activity (job_id, at);

-- The MantisNXT side.
CREATE TABLE customer (
    org_id              uuid NOT NULL,
    connection_id       uuid NOT NULL,
    woo_id              bigint NOT NULL,
    email               varchar(320) NOT NULL,
    first_name          varchar(255) NOT NULL DEFAULT '',
    last_name           varchar(255) NOT NULL DEFAULT '',
    username            varchar(255) NOT NULL DEFAULT '',
    role                varchar(100) NOT NULL DEFAULT 'customer',
    company             varchar(255) NOT NULL DEFAULT '',
    phone               varchar(100) NOT NULL DEFAULT '',
    billing             jsonb NOT NULL DEFAULT '{}'::jsonb,
    shipping            jsonb NOT NULL DEFAULT '{}'::jsonb,
    meta_data           jsonb NOT NULL DEFAULT '[]'::jsonb,
    is_paying_customer  boolean NOT NULL DEFAULT false,
    avatar_url          varchar(2048) NOT NULL DEFAULT '',
    woo_date_created    timestamptz,            -- from date_created_gmt (the store sends no zone)
    woo_date_modified   timestamptz,            -- from date_modified_gmt; null when never modified
    raw                 jsonb NOT NULL,
    source_hash         text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, connection_id, woo_id)
);
CREATE INDEX customer_org_email_idx ON customer (org_id, lower(email));
