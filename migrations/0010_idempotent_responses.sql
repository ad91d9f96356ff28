-- The answers of keyed mutations (`Idempotency-Key`), per caller and key, kept for a day so
-- that a retry gets the first answer and runs nothing (gateway/src/idempotency.rs). An
-- answer can hold a secret shown once, so it is stored sealed with a key derived from the
-- master key, which the database never sees. A row without an answer is a request still
-- running. These rows are a cache of answers, not a record: the events are the record.
CREATE TABLE idempotent_responses (
    actor           text NOT NULL,
    key             text NOT NULL,
    fingerprint     text NOT NULL,
    response_sealed text,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (actor, key)
);

CREATE INDEX idempotent_responses_by_age ON idempotent_responses (created_at);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotent_responses TO platform_app;
