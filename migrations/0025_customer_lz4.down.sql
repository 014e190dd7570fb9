DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE customer
            ALTER COLUMN raw SET COMPRESSION DEFAULT,
            ALTER COLUMN billing SET COMPRESSION DEFAULT,
            ALTER COLUMN shipping SET COMPRESSION DEFAULT,
            ALTER COLUMN meta_data SET COMPRESSION DEFAULT';
    END IF;
END
$$;
