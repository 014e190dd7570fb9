DROP FUNCTION IF EXISTS woosync_job_state_counts();
