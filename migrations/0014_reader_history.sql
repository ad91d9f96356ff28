-- Point-in-time reads (eventstore/src/history.rs, the gateway's `asOf`). The gateway rebuilds
-- a tenant's aggregates from the log inside the read transaction it already runs as
-- `platform_reader`, bound to the caller's tenant (migrations/0008_read_model_reader.sql).
--
-- The reader gets no grant on `events` or `snapshots` themselves. It reads them through two
-- views that show the bound tenant's rows only, so the tenant binding holds here as
-- row-level security holds it on the read models, without turning row-level security on
-- for the log itself (every other role that reads the log would then need a policy). The
-- views run with their owner's rights and are security barriers: no function in a query
-- over them sees another tenant's row. A transaction bound to no tenant sees nothing.
--
-- What the reader sees is what a tenant's own export holds: its events, with personal
-- fields sealed and secrets hashed, and the snapshots of its aggregates.

-- The bound tenant's events: every column of `events`.
CREATE VIEW tenant_events WITH (security_barrier) AS
SELECT global_position, event_id, aggregate_type, aggregate_id, sequence, event_type,
       event_version, tenant_id, recorded_at, payload, metadata, prev_hash, tenant_prev_hash,
       hash
  FROM events
 WHERE tenant_id = NULLIF(current_setting('platform.tenant_id', true), '')::uuid;

-- The snapshots of the bound tenant's aggregates, each with the global position of the
-- last event it covers (a snapshot belongs to the tenant whose event it ends at).
CREATE VIEW tenant_snapshots WITH (security_barrier) AS
SELECT s.aggregate_type, s.aggregate_id, s.last_sequence, e.global_position, s.payload
  FROM snapshots s
  JOIN events e
    ON e.aggregate_type = s.aggregate_type
   AND e.aggregate_id = s.aggregate_id
   AND e.sequence = s.last_sequence
 WHERE e.tenant_id = NULLIF(current_setting('platform.tenant_id', true), '')::uuid;

GRANT SELECT ON tenant_events, tenant_snapshots TO platform_reader;

-- The head's position: a position beyond it is refused, and a time after the tenant's last
-- event reads as of the head.
GRANT SELECT (position) ON log_head TO platform_reader;
