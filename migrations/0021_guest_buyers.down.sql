ALTER TABLE woo_customer_sync_queue_line DROP COLUMN kind;
DELETE FROM customer WHERE kind = 'guest';
DROP INDEX customer_guest_key_idx;
ALTER TABLE customer DROP CONSTRAINT customer_guest_key_check, DROP COLUMN guest_key,
    DROP COLUMN kind;
ALTER TABLE woo_customer_sync_queue DROP COLUMN include_guests;
ALTER TABLE woo_connections DROP COLUMN include_guests;
