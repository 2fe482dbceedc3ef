-- Rate-limit overrides, tenant plan budgets and shadow limits
-- (docs/ratelimits.md). Written by `tallyctl limits set`; read by every API
-- instance every TALLY_LIMITS_REFRESH_MS (rows changed since the last load,
-- by updated_at), so a change takes effect without a restart.
--
-- One row per subject and mode:
--   subject_kind 'key'    subject_id an api_keys.id: overrides the key's tier
--                         or contract (mode 'enforce'), or a new limit
--                         evaluated beside it (mode 'shadow')
--   subject_kind 'tenant' subject_id a tenants.id: the budget every key of
--                         the tenant shares (no row: no tenant budget)
-- rate_per_sec NULL and tier NULL: the row limits nothing (rows are never
-- deleted, so that every instance sees the change).
CREATE TABLE rate_limits (
    subject_kind text NOT NULL CHECK (subject_kind IN ('key', 'tenant')),
    subject_id   text NOT NULL,
    mode         text NOT NULL CHECK (mode IN ('enforce', 'shadow')),
    tier         text CHECK (tier IN ('free', 'standard')),
    rate_per_sec integer CHECK (rate_per_sec > 0),
    burst        integer CHECK (burst > 0),
    concurrency  integer CHECK (concurrency > 0),
    long_polls   integer CHECK (long_polls > 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_kind, subject_id, mode)
);
CREATE INDEX rate_limits_updated_at ON rate_limits (updated_at);
