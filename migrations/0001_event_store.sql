-- The event log: the platform's single source of truth.
--
-- Invariants (see docs/event-store.md and docs/hash-spec.md):
--   * global_position is gap-free and in commit order: positions are assigned by the
--     appender while it holds the lock on the log_head row, inside the appending transaction;
--   * (aggregate_type, aggregate_id, sequence) is unique: the optimistic-concurrency check;
--   * rows never change: triggers reject UPDATE, DELETE and TRUNCATE, and the application
--     role has neither the privilege nor ownership;
--   * hash = SHA-256 of the canonical encoding of every other column, prev_hash links to the
--     previous event of the whole log, tenant_prev_hash to the previous event of the same
--     tenant (platform-level events, whose tenant_id is NULL, form their own chain).

CREATE TABLE events (
    global_position  bigint      NOT NULL PRIMARY KEY CHECK (global_position > 0),
    event_id         uuid        NOT NULL UNIQUE,
    aggregate_type   text        NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id     text        NOT NULL CHECK (aggregate_id <> ''),
    sequence         bigint      NOT NULL CHECK (sequence > 0),
    event_type       text        NOT NULL,
    event_version    text        NOT NULL,
    tenant_id        uuid,
    recorded_at      timestamptz NOT NULL,
    payload          json        NOT NULL,
    metadata         json        NOT NULL,
    prev_hash        bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    tenant_prev_hash bytea       NOT NULL CHECK (octet_length(tenant_prev_hash) = 32),
    hash             bytea       NOT NULL CHECK (octet_length(hash) = 32),
    CONSTRAINT events_aggregate_sequence_key UNIQUE (aggregate_type, aggregate_id, sequence)
);

-- A tenant's slice of the log, in order (tenant export, tenant chain verification), and the
-- last event of a tenant's chain (the appender reads it when it extends the chain).
CREATE INDEX events_tenant_position_idx ON events (tenant_id, global_position);

-- The head of the log: one row, locked by every appending transaction. Its lock is what
-- makes positions gap-free and commit-ordered; its hash is the hash of the last event.
CREATE TABLE log_head (
    singleton boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL CHECK (position >= 0),
    hash      bytea   NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO log_head (singleton, position, hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- Aggregate snapshots for cqrs-es. Derived, replaceable state: not part of the record.
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Immutability: no row of the log is ever changed or removed.
CREATE FUNCTION events_reject_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'events are immutable; correct a mistake with a new, compensating event';
END;
$$;

CREATE TRIGGER events_reject_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();

CREATE TRIGGER events_reject_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
