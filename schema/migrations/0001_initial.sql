-- voicealert initial schema (contract 3). Operators query these tables with SQL, so the
-- constraints below are what keeps the data honest, not the application code alone.

CREATE TABLE alert_groups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text        NOT NULL CHECK (length(tenant) BETWEEN 1 AND 200),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- ordered list of {"name": ..., "phone": "+E164"}; ring order is list order
    members     jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(members) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, name)
);

CREATE TABLE alerts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant            text        NOT NULL,
    alert_id          text        NOT NULL CHECK (length(alert_id) BETWEEN 1 AND 200),
    -- identity of the event that created this row: its event_id when the producer gave one,
    -- else 'stream:' || stream_id. Unique, so a redelivered or re-sent event creates nothing.
    event_key         text        NOT NULL,
    group_name        text        NOT NULL,
    message           text        NOT NULL,
    mode              text        NOT NULL CHECK (mode IN ('parallel', 'sequential')),
    status            text        NOT NULL CHECK (status IN (
                          'calling', 'answered', 'unanswered', 'failed', 'resolved',
                          'unknown_group', 'empty_group')),
    dedup_window_s    integer     NOT NULL CHECK (dedup_window_s BETWEEN 0 AND 86400),
    metadata          jsonb       NOT NULL DEFAULT '{}',
    event_id          text,
    stream_id         text        NOT NULL,
    duplicates        integer     NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
    last_duplicate_at timestamptz,
    received_at       timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    UNIQUE (tenant, event_key)
);
-- `voicealert calls --alert-id`, resolve and dedup bookkeeping look alerts up by id, newest first.
CREATE INDEX alerts_tenant_alert_id_idx ON alerts (tenant, alert_id, received_at DESC);

-- One row per deduplicated event: the audit trail behind alerts.duplicates. Keyed by the
-- suppressed entry so a redelivered duplicate is counted once.
CREATE TABLE duplicate_events (
    tenant       text        NOT NULL,
    owner_key    text        NOT NULL,  -- event_key of the alert that holds the dedup lock
    stream_id    text        NOT NULL,
    alert_id     text        NOT NULL,
    event_id     text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, owner_key, stream_id)
);

CREATE TABLE calls (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert              bigint      NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    position           integer     NOT NULL CHECK (position >= 0),
    member_name        text        NOT NULL,
    phone              text        NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{1,14}$'),
    status             text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                           'pending', 'dialing', 'queued', 'ringing', 'in-progress',
                           'completed', 'busy', 'no-answer', 'failed', 'canceled')),
    provider_sid       text        UNIQUE,
    attempts           integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- when the latest POST to the provider started: the lower bound of the lookup that runs
    -- before any re-POST, since the provider has no idempotency key.
    attempt_started_at timestamptz,
    -- how many times a POST may have created a second call (ambiguous failure, no lookup hit)
    possible_duplicates integer    NOT NULL DEFAULT 0 CHECK (possible_duplicates >= 0),
    error_code         integer,
    error_message      text,
    answered_by        text,
    duration_s         integer     CHECK (duration_s >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz,
    UNIQUE (alert, position)
);
-- `voicealert calls --status` and the operators' "what is still ringing" query.
CREATE INDEX calls_status_idx ON calls (status, created_at);

-- Order of call statuses: an update may only move a call forward (terminal statuses share
-- the last rank, so one terminal status never becomes another).
CREATE FUNCTION call_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'pending' THEN 0 WHEN 'dialing' THEN 1 WHEN 'queued' THEN 2 WHEN 'ringing' THEN 3
        WHEN 'in-progress' THEN 4 ELSE 5 END
$$;

-- A terminal call status never moves back, whatever code or operator runs the UPDATE.
CREATE FUNCTION calls_terminal_status_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('completed', 'busy', 'no-answer', 'failed', 'canceled')
       AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'call % is % (terminal) and cannot become %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER calls_terminal_status_is_final
    BEFORE UPDATE OF status ON calls
    FOR EACH ROW EXECUTE FUNCTION calls_terminal_status_is_final();

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL CHECK (source IN ('ingest', 'call')),
    reason      text        NOT NULL,
    error       text,
    payload     jsonb       NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    -- what the letter is about ('stream:<id>', 'call:<id>:<attempt>'); unique so the same
    -- failure redelivered is lettered once
    letter_key  text        NOT NULL UNIQUE,
    call        bigint      REFERENCES calls (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX dead_letters_created_at_idx ON dead_letters (created_at);
