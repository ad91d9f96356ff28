-- The data keys of data subjects (people), kept apart from the events. Every personal field
-- of every event is sealed with its subject's key; destroying the key (crypto-shredding)
-- makes those fields unreadable everywhere while the events and their hash chain stay.
--
-- A key is stored wrapped: sealed with the platform's key-wrapping key, which comes from the
-- serving process's configuration and never reaches the database. A key is destroyed by
-- setting `wrapped_key` to NULL; the row stays as the record that the subject was forgotten,
-- so that no new key can ever be made for them.
CREATE TABLE subject_keys (
    subject_id   uuid PRIMARY KEY,
    wrapped_key  bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    CONSTRAINT destroyed_keys_hold_nothing CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);

-- A key can only be destroyed: never replaced, never restored, never deleted.
CREATE FUNCTION subject_keys_only_destroy() RETURNS trigger
LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'subject keys are never deleted; destroy the key instead'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.wrapped_key IS NULL OR NEW.wrapped_key IS NOT NULL
       OR NEW.subject_id <> OLD.subject_id OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'a subject key can only be destroyed, once'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER subject_keys_only_destroy
    BEFORE UPDATE OR DELETE ON subject_keys
    FOR EACH ROW EXECUTE FUNCTION subject_keys_only_destroy();

GRANT SELECT, INSERT, UPDATE (wrapped_key, destroyed_at) ON subject_keys TO platform_app;
