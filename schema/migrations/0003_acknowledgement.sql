-- Acknowledgement, rounds and one ring at a time per person (issue 9).
--
-- An alert is acknowledged by a keypress on a call or by an `ack` event; until then it is
-- called again in rounds. Calls to the same number that come due together are merged into
-- one provider call: the merged rows point at the row that placed it and share its sid.

-- Alerts: two new statuses, who acknowledged and when, and the rounds.
ALTER TABLE alerts DROP CONSTRAINT alerts_status_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_status_check CHECK (status IN (
    'calling', 'answered', 'unanswered', 'failed', 'resolved', 'unknown_group', 'empty_group',
    'acknowledged', 'unacknowledged'));
ALTER TABLE alerts
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text CHECK (length(acknowledged_by) BETWEEN 1 AND 200),
    -- the round being called (1-based), how many rounds at most, the pause between two
    ADD COLUMN round          integer NOT NULL DEFAULT 1 CHECK (round >= 1),
    -- alerts stored before this migration had one round
    ADD COLUMN rounds         integer NOT NULL DEFAULT 1 CHECK (rounds BETWEEN 1 AND 20),
    ADD COLUMN round_delay_s  integer NOT NULL DEFAULT 120
                              CHECK (round_delay_s BETWEEN 0 AND 86400),
    -- set when a round ended unacknowledged and another is due: the durable record of the
    -- next round (its job is re-created from it if Redis lost it)
    ADD COLUMN next_round_at  timestamptz;
CREATE INDEX alerts_next_round_at_idx ON alerts (next_round_at) WHERE next_round_at IS NOT NULL;

-- Groups: how many rounds, and the pause between them, unless the event says otherwise.
ALTER TABLE alert_groups
    ADD COLUMN rounds        integer NOT NULL DEFAULT 3 CHECK (rounds BETWEEN 1 AND 20),
    ADD COLUMN round_delay_s integer NOT NULL DEFAULT 120 CHECK (round_delay_s BETWEEN 0 AND 86400);

-- Calls: the round, the keypress, merging.
ALTER TABLE calls
    ADD COLUMN round           integer NOT NULL DEFAULT 1 CHECK (round >= 1),
    ADD COLUMN acknowledged_at timestamptz,
    ADD COLUMN acknowledged_by text,
    -- the call row whose provider call this one was merged into (it speaks both alerts)
    ADD COLUMN merged_into     bigint REFERENCES calls (id) ON DELETE SET NULL,
    -- when this call came due and found the number busy (or its merge window open)
    ADD COLUMN waiting_since   timestamptz,
    -- the highest SequenceNumber of the provider's status callbacks applied so far
    ADD COLUMN callback_sequence integer;
-- A round calls every member again: positions repeat per round.
ALTER TABLE calls DROP CONSTRAINT calls_alert_position_key;
ALTER TABLE calls ADD CONSTRAINT calls_alert_round_position_key UNIQUE (alert, round, position);
-- A merged provider call is recorded on every row it speaks for: the sid is no longer unique.
ALTER TABLE calls DROP CONSTRAINT calls_provider_sid_key;
CREATE INDEX calls_provider_sid_idx ON calls (provider_sid) WHERE provider_sid IS NOT NULL;
CREATE INDEX calls_merged_into_idx ON calls (merged_into) WHERE merged_into IS NOT NULL;
-- "Is this number already being called?": the calls not ended, by number.
CREATE INDEX calls_open_by_phone_idx ON calls (phone)
    WHERE status IN ('pending', 'dialing', 'queued', 'ringing', 'in-progress');
