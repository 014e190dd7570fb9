-- Rows become changeable again. The privileges revoked from PUBLIC were never granted, so there
-- is nothing to give back.
DROP TRIGGER IF EXISTS woo_sync_activity_append_only ON woo_sync_activity;
DROP FUNCTION IF EXISTS woo_sync_activity_append_only();
