-- The role the gateway reads read models as. It cannot log in: the application role
-- switches to it for one transaction (`SET LOCAL ROLE platform_reader`) after binding the
-- transaction to the caller's tenant (`set_config('platform.tenant_id', ..., true)`).
-- Row-level security on every read-model table that has a `tenant_id` lets it see that
-- tenant's rows only: the backstop behind the gateway's own checks. The read models create
-- their policies and grants with their tables (see projections/src/identity.rs), because a
-- rebuild creates the tables again.
DO
$$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'platform_reader') THEN
        CREATE ROLE platform_reader NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;
END;
$$;

GRANT platform_reader TO platform_app;
