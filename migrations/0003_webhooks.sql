-- Webhooks: endpoints a tenant registers, and one delivery per (event,
-- endpoint) with every attempt made to send it.
--
--   * webhook_endpoints: written by the command API (create, patch, delete,
--     rotate-secret) and by the worker's webhooks role (disable after 410 or
--     after failing for too long).
--   * webhook_deliveries: inserted by the webhooks role in its fenced batch
--     transaction (exactly once per event and endpoint: the consumer dedups
--     and the pair is unique), then sent and re-sent from here; pending
--     deliveries and scheduled retries live only in this table, so they
--     resume after any crash.
--   * webhook_attempts: one row per HTTP attempt, for
--     GET /v1/webhook-endpoints/{id}/deliveries.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    tenant_id                   uuid NOT NULL REFERENCES tenants(id),
    url                         text NOT NULL,
    description                 text NOT NULL DEFAULT '',
    event_types                 text[] NOT NULL,      -- event type names, or '*' for every type
    enabled                     boolean NOT NULL DEFAULT true,
    disabled_reason             text,                 -- 'gone' (410), 'failing' (every attempt failed for days), 'manual'
    secret                      text NOT NULL,        -- whsec_<base64 of >= 24 random bytes>
    previous_secret             text,                 -- still signs until previous_secret_expires_at (rotation)
    previous_secret_expires_at  timestamptz,
    failing_since               timestamptz,          -- oldest failed attempt since the last success; NULL when healthy
    version                     bigint NOT NULL DEFAULT 1,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    deleted_at                  timestamptz           -- soft delete: deliveries stay readable, nothing more is sent
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at, id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    id                uuid PRIMARY KEY,                -- webhook-id header: stable across retries and replays
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints(id),
    tenant_id         uuid NOT NULL,
    event_id          uuid NOT NULL,
    event_type        text NOT NULL,
    occurred_at       timestamptz NOT NULL,            -- the event's time (replay windows select on it)
    payload           text NOT NULL,                   -- the body, {type, timestamp, data}, exactly as signed
    status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,                     -- due time while pending (also the lease of an attempt in flight)
    last_status_code  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at, id);
CREATE INDEX webhook_deliveries_endpoint_time ON webhook_deliveries (endpoint_id, occurred_at);

CREATE TABLE webhook_attempts (
    delivery_id  uuid NOT NULL REFERENCES webhook_deliveries(id),
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    status_code  integer,             -- NULL: no HTTP answer (refused, timeout, SSRF refusal, ...)
    latency_ms   integer NOT NULL,
    error        text,
    PRIMARY KEY (delivery_id, attempt)
);
