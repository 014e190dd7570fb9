-- Back to the old column limits: longer values are cut to fit (the down direction loses them).
ALTER TABLE woo_customer_sync_queue_line DROP COLUMN warning;
ALTER TABLE customer
    ALTER COLUMN email TYPE varchar(320) USING left(email, 320),
    ALTER COLUMN first_name TYPE varchar(255) USING left(first_name, 255),
    ALTER COLUMN last_name TYPE varchar(255) USING left(last_name, 255),
    ALTER COLUMN username TYPE varchar(255) USING left(username, 255),
    ALTER COLUMN role TYPE varchar(100) USING left(role, 100),
    ALTER COLUMN company TYPE varchar(255) USING left(company, 255),
    ALTER COLUMN phone TYPE varchar(100) USING left(phone, 100),
    ALTER COLUMN avatar_url TYPE varchar(2048) USING left(avatar_url, 2048);
