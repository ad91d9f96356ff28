-- Signed checkpoints (docs/audit.md): an Ed25519 signature over a position, the hash of the
-- event there, and the root of every chain's head at that position. The signing key lives
-- only in the signing process's configuration; the database holds public keys and
-- signatures, which an auditor checks against keys obtained elsewhere.

-- Every key that signs or has signed checkpoints, so that old checkpoints stay verifiable after a
-- rotation. `kid` is the first 16 hex characters of SHA-256 of the raw public key.
CREATE TABLE audit_keys (
    kid             text PRIMARY KEY CHECK (kid ~ '^[0-9a-f]{16}$'),
    public_key      bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_checkpoints (
    position     bigint PRIMARY KEY CHECK (position >= 1),
    head_hash    bytea NOT NULL CHECK (length(head_hash) = 32),
    tenants_root bytea NOT NULL CHECK (length(tenants_root) = 32),
    signed_at    timestamptz NOT NULL,
    kid          text NOT NULL REFERENCES audit_keys (kid),
    signature    bytea NOT NULL CHECK (length(signature) = 64)
);

-- Like the log, checkpoints and keys are never changed or removed.
CREATE FUNCTION audit_reject_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_checkpoints_reject_change
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_reject_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_keys_reject_change
    BEFORE UPDATE OR DELETE ON audit_keys
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_keys_reject_truncate
    BEFORE TRUNCATE ON audit_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

GRANT SELECT, INSERT ON audit_keys, audit_checkpoints TO platform_app;
