-- When each API key was last used. Deliberately not events: a use is per-request noise, not
-- a decision, so the event log records creation and revocation and this table records use.
-- Uses are gathered in memory and written in batches; a row only ever moves forward in time.
CREATE TABLE api_key_usage (
    key_id       uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    last_used_at timestamptz NOT NULL,
    uses         bigint NOT NULL DEFAULT 0 CHECK (uses >= 0)
);

CREATE INDEX api_key_usage_by_tenant ON api_key_usage (tenant_id);

GRANT SELECT, INSERT, UPDATE ON api_key_usage TO platform_app;
