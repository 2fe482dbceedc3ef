-- Transfers: the saga's own state and the transfers read model.
--
--   * transfer_sagas (worker, role saga): one row per transfer, advanced in the
--     saga consumer's batch transaction together with its outbox rows and
--     positions, so each event advances a saga exactly once.
--   * transfers (worker, role projector): the read model behind
--     GET /v1/transfers[/{id}].

CREATE TABLE transfer_sagas (
    transfer_id       uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    job_id            uuid,
    request_event_id  uuid NOT NULL,          -- every id the saga derives hangs off it
    from_account      uuid NOT NULL,
    to_account        uuid NOT NULL,
    amount            bigint NOT NULL,
    currency          text NOT NULL,
    state             text NOT NULL CHECK (state IN ('debiting', 'crediting', 'compensating', 'completed', 'rejected', 'failed')),
    error_code        text,
    error_detail      text,
    attempt           integer NOT NULL DEFAULT 0,   -- reversal attempt (a rejected reversal is sent again as a new attempt)
    sends             integer NOT NULL DEFAULT 1,   -- sends of the pending step (re-sends after deadlines)
    step_cause_id     uuid,                         -- the pending step, re-sent unchanged:
    step_at           timestamptz,                  --   its causation and occurred_at
    deadline_at       timestamptz,   -- re-send the pending step after this; NULL once finished
    stuck_at          timestamptz,   -- unfinished past this = stuck (tallyctl sagas list --stuck); NULL once finished
    version           bigint NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transfer_sagas_deadline ON transfer_sagas (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX transfer_sagas_stuck ON transfer_sagas (stuck_at) WHERE stuck_at IS NOT NULL;

-- Read model. Events of one transfer arrive on several partitions (the
-- transfer's and both accounts'), so every apply is an upsert that merges:
-- status only moves forward (requested < debited < compensating < terminal),
-- the timeline is kept sorted by time, and a row first created by an account
-- event is completed by its TransferRequested (until then from_account is
-- NULL and the query API does not show it).
CREATE TABLE transfers (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    from_account  uuid,
    to_account    uuid,
    amount        bigint,                      -- NULL only until a money-carrying event is applied
    currency      char(3),
    reference     text,
    status        text NOT NULL CHECK (status IN ('requested', 'debited', 'completed', 'rejected', 'compensating', 'failed')),
    compensated   boolean NOT NULL DEFAULT false,
    error_code    text,
    error_detail  text,
    job_id        uuid,
    version       bigint NOT NULL,
    timeline      jsonb NOT NULL DEFAULT '[]',   -- [{step, at}] sorted by at
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX transfers_tenant_created ON transfers (tenant_id, created_at, id);
CREATE INDEX transfers_from_created ON transfers (from_account, created_at, id);
CREATE INDEX transfers_to_created ON transfers (to_account, created_at, id);

CREATE INDEX ledger_entries_transfer ON ledger_entries (transfer_id) WHERE transfer_id IS NOT NULL;
