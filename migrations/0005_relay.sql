-- The relay's checkpoint: the highest global position whose publish JetStream acknowledged,
-- with every position before it. A relay resumes after it; republishing is harmless, since
-- JetStream drops a repeated Nats-Msg-Id and consumers skip positions they applied.
CREATE TABLE relay_checkpoints (
    name       text PRIMARY KEY,
    position   bigint NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE ON relay_checkpoints TO platform_app;

-- Wakes the relay once per append statement (not per event): the appender writes a whole
-- batch with one statement, and PostgreSQL folds identical notifications of a transaction
-- into one. Delivery happens at commit, so a woken relay finds the events committed.
CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('platform_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
