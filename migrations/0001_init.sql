-- Tally schema, version 1.
--
-- Three groups of tables, each with one writer:
--   * command side (command API): tenants, api_keys, command_requests
--   * decider (worker, role decider): decider_accounts, outbox
--   * read models (worker, role projector): accounts, ledger_entries, jobs
-- and the bookkeeping every consumer shares: consumer_positions (fenced
-- Kafka offsets per partition) and consumer_dedup (event ids applied).

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys: tly_live_<id>_<secret>. Only SHA-256(secret) is stored; the secret
-- is 256 bits of randomness, so a fast hash is enough (no dictionary to attack).
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants(id),
    secret_hash  bytea NOT NULL,
    scopes       text[] NOT NULL,
    tier         text NOT NULL DEFAULT 'standard',
    rate_per_sec integer,          -- contract override of the tier, NULL = tier
    burst        integer,
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_updated_at ON api_keys (updated_at);

-- Every command the API accepted or is accepting. It is the command side's own
-- record (idempotency, job ids), never a read model: the query API reads it only
-- to show a job as queued before the projector has seen its event.
CREATE TABLE command_requests (
    job_id          uuid PRIMARY KEY,
    event_id        uuid NOT NULL UNIQUE,   -- id of the request event, reused on retry
    tenant_id       uuid NOT NULL,
    idempotency_key text,
    request_hash    bytea NOT NULL,         -- SHA-256 of method, path and body
    state           text NOT NULL CHECK (state IN ('pending', 'accepted', 'failed')),
    locked_until    timestamptz NOT NULL,   -- a pending request past this may be taken over
    resource_type   text NOT NULL,
    resource_id     uuid NOT NULL,
    response_status integer,
    response_body   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL DEFAULT now() + interval '24 hours'
);
CREATE UNIQUE INDEX command_requests_idem ON command_requests (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Kafka positions per consumer and partition. `epoch` is a fencing token: a
-- worker that is assigned a partition bumps it, and every commit is
-- conditional on the epoch it read, so a worker that lost the partition in a
-- rebalance cannot commit over the new owner.
CREATE TABLE consumer_positions (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL DEFAULT 0,
    epoch        bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Event ids each consumer applied: the outbox relay publishes at least once,
-- so the same event (same id) may appear at two offsets.
CREATE TABLE consumer_dedup (
    consumer  text NOT NULL,
    event_id  uuid NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Decider state: one row per account aggregate, rebuildable from outcome events.
CREATE TABLE decider_accounts (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    currency    char(3) NOT NULL,
    status      text NOT NULL,
    balance     bigint NOT NULL,
    version     bigint NOT NULL
);

-- Transactional outbox: events decided in the same transaction as the state
-- change, published by the relay, then deleted.
CREATE TABLE outbox (
    seq         bigserial PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    topic       text NOT NULL,
    msg_key     text NOT NULL,
    payload     text NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Read models (written by the projector only).
CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    currency    char(3) NOT NULL,
    label       text NOT NULL,
    status      text NOT NULL,
    balance     bigint NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX accounts_tenant_created ON accounts (tenant_id, created_at, id);

CREATE TABLE ledger_entries (
    id             uuid PRIMARY KEY,        -- = id of the event that caused it
    tenant_id      uuid NOT NULL,
    account_id     uuid NOT NULL,
    kind           text NOT NULL,           -- deposit, withdrawal, transfer_debit, ...
    amount         bigint NOT NULL,         -- signed, minor units
    currency       char(3) NOT NULL,
    balance_after  bigint NOT NULL,
    transfer_id    uuid,
    job_id         uuid,
    created_at     timestamptz NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, created_at, id);

CREATE TABLE jobs (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    status         text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    resource_type  text NOT NULL,
    resource_id    uuid NOT NULL,
    error_code     text,
    error_detail   text,
    version        bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- Events the projector could not apply after its retries (dead letters).
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    event_id    uuid,
    payload     text NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, topic, partition, "offset")
);
