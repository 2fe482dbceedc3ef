-- Reads in time (GET /v1/accounts/{id}?as_of=, issue 25).
--
-- An account's history is its events: the balance changes are its ledger
-- entries (each with balance_after and its time), the status changes
-- (frozen, unfrozen, closed) are appended here by the projector, one element
-- per event, [{"at": <timestamptz>, "status": <status>}], in the same update
-- as the row. Version at an instant = 1 + the entries and status changes up to
-- it (version counts the account's events). Part of the accounts read model:
-- tallyctl replay rebuilds it with the same projection.
-- Accounts projected before this migration have no status history: their
-- status at any past instant reads as their status now.
ALTER TABLE accounts ADD COLUMN status_changes jsonb NOT NULL DEFAULT '[]';

-- The projector's watermark: per partition of the event log, the time of the
-- newest event it applied from it (occurred_at), written in the projector's
-- batch transaction. Bookkeeping of the live projector like
-- consumer_positions, not a read model. The query API reads min(applied_through)
-- as "every event that occurred up to here is applied" (Tally-Watermark).
CREATE TABLE projector_watermarks (
    partition        integer PRIMARY KEY,
    applied_through  timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
