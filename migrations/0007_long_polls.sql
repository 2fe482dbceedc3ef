-- The long-poll quota (tenants.max_long_polls, 0006) travels with the keys:
-- the query API's key cache reads it with them, and a change of it touches
-- the tenant's keys, so their NOTIFY (0006) carries it to every instance.
-- Its default becomes 1,000 concurrent Prefer: wait requests per query API
-- instance: a waiter holds no thread and no database connection (only an
-- entry in a map and a timer), so the quota guards memory, not capacity.
ALTER TABLE tenants ALTER COLUMN max_long_polls SET DEFAULT 1000;
UPDATE tenants SET max_long_polls = 1000 WHERE max_long_polls = 100;

CREATE FUNCTION tally_touch_tenant_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_keys SET updated_at = now() WHERE tenant_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_long_polls_changed AFTER UPDATE OF max_long_polls ON tenants
    FOR EACH ROW WHEN (OLD.max_long_polls IS DISTINCT FROM NEW.max_long_polls)
    EXECUTE FUNCTION tally_touch_tenant_keys();
