-- A stored customer's documents are compressed with lz4 rather than pglz (issue 12, item 2).
--
-- A synced customer's row (raw, billing, shipping, meta_data as jsonb) passes PostgreSQL's
-- 2 kB threshold for compression, so every insert and every changed update compresses it:
-- with pglz that was about 4 % of the database's CPU in `python -m bench.throughput`, with lz4
-- a fraction of it, and reading a row back is faster too. Rows already stored keep their pglz
-- values until they are next written; both read the same. A server built without lz4, or older
-- than PostgreSQL 14 (which has no per-column compression), keeps pglz (a notice says so):
-- nothing else depends on it. EXECUTE, so that an older server does not parse the statement.
DO $$
BEGIN
    IF current_setting('server_version_num')::int < 140000 THEN
        RAISE NOTICE 'PostgreSQL before 14: customer documents stay compressed with pglz';
        RETURN;
    END IF;
    EXECUTE 'ALTER TABLE customer
        ALTER COLUMN raw SET COMPRESSION lz4,
        ALTER COLUMN billing SET COMPRESSION lz4,
        ALTER COLUMN shipping SET COMPRESSION lz4,
        ALTER COLUMN meta_data SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: customer documents stay compressed with pglz';
END
$$;
