DROP FUNCTION IF EXISTS woosync_webhook_connections();
DROP FUNCTION IF EXISTS woosync_webhook_by_token(bytea);
DROP TABLE IF EXISTS woo_webhook;
-- customer.deleted_at stays: migration 0013 (soft deletions) owns it when both are applied.
