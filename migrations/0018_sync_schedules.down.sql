DROP FUNCTION IF EXISTS woosync_due_schedules(int);
DROP TABLE IF EXISTS woo_sync_schedule;
