-- The history behind calls.status: one row per status change (and per dialing attempt), in
-- order, with who made it. Written in the same statement as the change it records, so the
-- two cannot disagree. Calls created before this migration have no history before it.

CREATE TABLE call_events (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call    bigint      NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    status  text        NOT NULL CHECK (status IN (
                'pending', 'dialing', 'queued', 'ringing', 'in-progress',
                'completed', 'busy', 'no-answer', 'failed', 'canceled')),
    -- worker: placing the call and the worker's own decisions; poll: read from the provider;
    -- callback: a provider status callback; cancel: a resolve; operator: a CLI command
    -- (DLQ replay); sweeper: repair of a call left behind
    source  text        NOT NULL CHECK (source IN (
                'worker', 'poll', 'callback', 'cancel', 'operator', 'sweeper')),
    detail  text,       -- an error message, a provider error code, the attempt number
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_events_call_idx ON call_events (call, id);
