ALTER TABLE woo_customer_sync_page
    DROP COLUMN IF EXISTS start_offset,
    DROP COLUMN IF EXISTS first_id,
    DROP COLUMN IF EXISTS last_id;
