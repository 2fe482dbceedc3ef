-- Read-model versions on a channel, for the query API's conditional GETs.
--
-- The query API answers If-None-Match on GET /v1/accounts/{id} and
-- /v1/transfers/{id} from a per-thread cache of (id, tenant, latest version)
-- when it can, without a database read. That cache is only correct if it hears
-- of every new version: these statement-level triggers NOTIFY tally_versions
-- with "<kind> <id>:<version>,<id>:<version>,..." (kind 'a' accounts, 't'
-- transfers; at most 150 rows per notification, under the 8000-byte payload
-- limit) for every UPDATE, including INSERT ... ON CONFLICT DO UPDATE.
-- Notifications are delivered at commit, so the cache never learns of a
-- version a reader cannot see yet.
--
-- The query API uses its cache only while it is listening and only after it
-- has checked that both triggers exist (tallyctl replay's swap moves fresh
-- tables into public, re-creates the triggers on them and sends '*', which
-- empties every cache and makes it check again).

CREATE FUNCTION tally_notify_versions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chunk text;
BEGIN
    FOR chunk IN
        SELECT string_agg(c.id::text || ':' || c.version, ',')
        FROM (SELECT id, version, (row_number() OVER ()) / 150 AS g FROM changed) c
        GROUP BY c.g
    LOOP
        PERFORM pg_notify('tally_versions', TG_ARGV[0] || ' ' || chunk);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_notify_versions AFTER UPDATE ON accounts REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_versions('a');
CREATE TRIGGER transfers_notify_versions AFTER UPDATE ON transfers REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION tally_notify_versions('t');
