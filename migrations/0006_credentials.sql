-- Credentials and abuse limits (issue 19): key expiry, tenant quotas, the
-- revocation push and the audit trail.

-- A key may carry an expiry; the APIs refuse it from then on. A key made
-- over HTTP records the key that made it (NULL: made by tallyctl).
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN created_by text;

-- Tenant quotas, each with its default here and nowhere else; changed per
-- tenant with `tallyctl tenants quota`. Live keys are those neither revoked
-- nor expired; endpoints those not deleted; long-polls are concurrent
-- `Prefer: wait` requests held by one query API instance.
ALTER TABLE tenants
    ADD COLUMN max_api_keys integer NOT NULL DEFAULT 50 CHECK (max_api_keys BETWEEN 0 AND 100000),
    ADD COLUMN max_webhook_endpoints integer NOT NULL DEFAULT 20 CHECK (max_webhook_endpoints BETWEEN 0 AND 10000),
    ADD COLUMN max_long_polls integer NOT NULL DEFAULT 100 CHECK (max_long_polls BETWEEN 0 AND 100000);

-- Every change of a key (insert, revocation, expiry) is announced at commit
-- on tally_api_keys with the key id: each API instance's key cache listens
-- and reloads at once; its poll (TALLY_KEY_REFRESH_MS) stays as the fallback
-- for a notification lost while its connection was down.
CREATE FUNCTION tally_notify_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tally_api_keys', NEW.id);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tally_notify_api_key();

-- The audit trail: who (the acting key and its tenant, or an operator
-- through tallyctl), which request, when, and what changed, for every
-- create, revoke, rotate and change of API keys, webhook endpoints and
-- tenant quotas. Written in the same statement as the change it records.
-- Never a secret: `changes` holds ids, scopes, tiers, urls and flags only.
CREATE TABLE audit_events (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants(id),
    actor_type    text NOT NULL CHECK (actor_type IN ('api_key', 'operator')),
    actor_id      text NOT NULL,          -- the key id, or the operator's OS account
    request_id    text,                   -- X-Request-Id of the API request (NULL for tallyctl)
    action        text NOT NULL,          -- e.g. api_key.created, webhook_endpoint.secret_rotated
    resource_type text NOT NULL,          -- api_key, webhook_endpoint, tenant
    resource_id   text NOT NULL,
    changes       jsonb NOT NULL DEFAULT '{}',
    occurred_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, occurred_at, id);

-- Append-only: no row is ever changed or removed, not even by the owner
-- role the services connect as (dropping the trigger takes DDL, which the
-- services never run).
CREATE FUNCTION tally_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION tally_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_audit_append_only();

-- The quotas are enforced here, once, for the APIs and tallyctl alike. The
-- trigger locks the tenant's row first (FOR NO KEY UPDATE: foreign key
-- checks still pass), so concurrent inserts for one tenant
-- count one after the other (each statement of a volatile function sees
-- what committed before it ran). Over the quota: SQLSTATE TQ001, which the
-- APIs answer as 422 quota_exceeded with this message.
CREATE FUNCTION tally_check_quota() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    quota integer;
    live bigint;
BEGIN
    IF TG_TABLE_NAME = 'api_keys' THEN
        SELECT max_api_keys INTO quota FROM tenants WHERE id = NEW.tenant_id FOR NO KEY UPDATE;
        SELECT count(*) INTO live FROM api_keys
         WHERE tenant_id = NEW.tenant_id AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now());
        IF live >= quota THEN
            RAISE EXCEPTION 'this tenant has reached its quota of % live API keys; revoke one first', quota
                USING ERRCODE = 'TQ001';
        END IF;
    ELSE
        SELECT max_webhook_endpoints INTO quota FROM tenants WHERE id = NEW.tenant_id FOR NO KEY UPDATE;
        SELECT count(*) INTO live FROM webhook_endpoints WHERE tenant_id = NEW.tenant_id AND deleted_at IS NULL;
        IF live >= quota THEN
            RAISE EXCEPTION 'this tenant has reached its quota of % webhook endpoints; delete one first', quota
                USING ERRCODE = 'TQ001';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER api_keys_quota BEFORE INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tally_check_quota();
CREATE TRIGGER webhook_endpoints_quota BEFORE INSERT ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION tally_check_quota();
