-- The gateway shows each API key's last use beside its metadata, read as `platform_reader`
-- (migrations/0008_read_model_reader.sql): the same tenant-bound row-level security as the
-- read models. The application role, which writes the uses, sees and writes every row.
GRANT SELECT ON api_key_usage TO platform_reader;
ALTER TABLE api_key_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON api_key_usage FOR SELECT TO platform_reader
    USING (tenant_id = NULLIF(current_setting('platform.tenant_id', true), '')::uuid);
CREATE POLICY application ON api_key_usage TO platform_app
    USING (true) WITH CHECK (true);
