-- What `voicealert status`, `alerts list` and the /metrics gauges read often: recent alerts
-- and calls by time, and alerts by status (those still calling), without scanning the
-- whole history on every scrape.

CREATE INDEX alerts_received_at_idx ON alerts (received_at);
CREATE INDEX alerts_status_idx ON alerts (status);
CREATE INDEX calls_created_at_idx ON calls (created_at);
