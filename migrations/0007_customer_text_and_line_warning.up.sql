-- No customer is lost for its content (issue 8): the customer's text columns hold text of any
-- length (a store's 70,000-character last name is stored whole; what limits a customer's size is
-- the broker's message size, see shared/broker.py). varchar -> text needs no table rewrite.
-- The e-mail keeps its rule in shared/mapping.py (at most 320 characters: an address, and a key
-- the lower(email) index can hold).
ALTER TABLE customer
    ALTER COLUMN email TYPE text,
    ALTER COLUMN first_name TYPE text,
    ALTER COLUMN last_name TYPE text,
    ALTER COLUMN username TYPE text,
    ALTER COLUMN role TYPE text,
    ALTER COLUMN company TYPE text,
    ALTER COLUMN phone TYPE text,
    ALTER COLUMN avatar_url TYPE text;

-- What the syncer changed or decided while storing a line's customer, on a line that is done:
-- "NUL characters removed from first_name" or "stale payload: ... kept the newer version".
ALTER TABLE woo_customer_sync_queue_line ADD COLUMN warning text;
