-- Guest buyers (issue 11, item 5): buyers who never made an account (orders with customer_id 0)
-- become customers too, when their connection includes guests (docs/architecture.md, "Guest
-- buyers").
--
-- The connection's setting, changed by a start request that names it; a job keeps the value it
-- was created with, so changing the setting never changes what a running job reads.
ALTER TABLE woo_connections ADD COLUMN include_guests boolean NOT NULL DEFAULT false;
ALTER TABLE woo_customer_sync_queue ADD COLUMN include_guests boolean NOT NULL DEFAULT false;

-- A guest is kept apart from the account customers of its connection: kind 'guest', and its
-- key (the normalized billing e-mail, shared/guests.py) unique per connection. Its woo_id is no
-- store id (a guest has none; one guest has many orders) but a negative number derived from the
-- key, so the customer's primary key, the lines and the syncer's upsert work unchanged.
ALTER TABLE customer
    ADD COLUMN kind text NOT NULL DEFAULT 'account'
        CONSTRAINT customer_kind_check CHECK (kind IN ('account', 'guest')),
    ADD COLUMN guest_key text,
    ADD CONSTRAINT customer_guest_key_check
        CHECK ((kind = 'guest') = (guest_key IS NOT NULL) AND (kind = 'guest') = (woo_id < 0));
CREATE UNIQUE INDEX customer_guest_key_idx ON customer (org_id, connection_id, guest_key)
    WHERE kind = 'guest';

-- A job's lines of guests, apart from its account customers' (the completeness check counts
-- only the latter against the store's X-WP-Total).
ALTER TABLE woo_customer_sync_queue_line ADD COLUMN kind text NOT NULL DEFAULT 'account'
    CONSTRAINT woo_customer_sync_queue_line_kind_check CHECK (kind IN ('account', 'guest'));
