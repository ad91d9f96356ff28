-- Projection checkpoints: per projection, the last global position applied, committed in
-- the same transaction as the effect (PostgreSQL read models) or mirrored from the same Lua
-- call (Redis read models), so at-least-once delivery yields exactly-once effects.
--
-- A poison event (one that keeps failing) parks its projection: `status` becomes 'parked'
-- with the position and the error, and the projection applies nothing more until an
-- operator resumes it after a fix, or explicitly skips that one position (`skip_position`).
CREATE TABLE projection_checkpoints (
    name            text PRIMARY KEY,
    version         integer NOT NULL,
    position        bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'parked')),
    parked_position bigint,
    parked_error    text,
    parked_at       timestamptz,
    skip_position   bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT parked_has_a_position CHECK ((status = 'parked') = (parked_position IS NOT NULL))
);

-- Events an operator skipped, kept for the audit: nothing is ever skipped silently.
CREATE TABLE projection_skips (
    name       text NOT NULL,
    position   bigint NOT NULL,
    error      text NOT NULL,
    skipped_by text NOT NULL,
    skipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, position)
);

GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO platform_app;
GRANT SELECT, INSERT ON projection_skips TO platform_app;

-- Each PostgreSQL read model lives in a schema of its own (`rm_<projection>`), which the
-- projection runner creates and, on a rebuild, swaps with a freshly built shadow schema.
DO $$
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO platform_app', current_database());
END;
$$;
