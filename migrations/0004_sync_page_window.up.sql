-- Where each page window of a crawl started and the first and last customer id it held. Windows
-- overlap, so a crawl (also one resumed by another fetcher) can prove that no customer fell
-- between two windows while the store changed; see docs/architecture.md, "Paging a live store".
-- Null for pages read before this migration: such a page proves nothing and is read again.
ALTER TABLE woo_customer_sync_page
    ADD COLUMN start_offset int CHECK (start_offset >= 0),
    ADD COLUMN first_id bigint,
    ADD COLUMN last_id bigint;
