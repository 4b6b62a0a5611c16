-- Bearer tokens of the HTTP API (voicealert tokens create|list|revoke), each scoped to one
-- tenant. A token reads "va_<key_id>_<secret>": key_id is public (it finds the row and names
-- the token in logs); only the SHA-256 digest of the whole token is kept, never the token.
-- A revoked token keeps its row (revoked_at set) for the record; its name may be reused.

CREATE TABLE api_tokens (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        text        NOT NULL CHECK (char_length(tenant) BETWEEN 1 AND 200),
    name          text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- fire: send events and read alerts back; admin: that, and administer alert groups
    scope         text        NOT NULL CHECK (scope IN ('fire', 'admin')),
    key_id        text        NOT NULL UNIQUE,
    token_sha256  bytea       NOT NULL CHECK (octet_length(token_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
-- One live token per name and tenant: `tokens revoke NAME` names exactly one.
CREATE UNIQUE INDEX api_tokens_live_name_idx ON api_tokens (tenant, name)
    WHERE revoked_at IS NULL;

-- The API lists a tenant's alerts newest first, a page at a time (keyset on id).
CREATE INDEX alerts_tenant_id_idx ON alerts (tenant, id DESC);
