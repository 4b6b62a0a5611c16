-- The sweeper (worker/sweeper.py) looks, every VOICEALERT_SWEEP_INTERVAL_S on one replica,
-- for the calls not ended yet: a small set in a table that keeps every call ever made.
CREATE INDEX calls_unfinished_idx ON calls (alert) WHERE call_status_rank(status) < 5;
