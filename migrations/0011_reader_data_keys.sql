-- The gateway opens the personal fields it shows inside the read transaction it runs as
-- `platform_reader`, on the same connection, so one request never waits for a second
-- connection. The reader sees wrapped keys only: they open with a key derived from the
-- master key, which the database never sees.
GRANT SELECT (subject_id, wrapped_key) ON subject_keys TO platform_reader;
