-- The role the serving process connects as. It can append to and read the log, but it does
-- not own any table, so it can neither change events nor disable the immutability triggers.
-- Migrations run as the owner. Roles are cluster-wide: create it only once, and tolerate a
-- concurrent migration of another database creating it at the same moment.
DO
$$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'platform_app') THEN
        CREATE ROLE platform_app LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
END;
$$;

GRANT USAGE ON SCHEMA public TO platform_app;
GRANT SELECT, INSERT ON events TO platform_app;
GRANT SELECT, UPDATE ON log_head TO platform_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots TO platform_app;
