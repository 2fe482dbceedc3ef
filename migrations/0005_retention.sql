-- Retention (tally-worker role "retention", services/worker/retention.c):
-- consumer_dedup rows get the time they were applied, and both pruned tables
-- get a BRIN index on the column the pruning filters by. BRIN, not B-tree:
-- the rows are inserted in time order, so a BRIN index (a few pages) finds
-- the old ones, and the hot path's inserts do not pay for another B-tree.
ALTER TABLE consumer_dedup ADD COLUMN applied_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX consumer_dedup_applied_at ON consumer_dedup USING brin (applied_at);
CREATE INDEX command_requests_expires_at ON command_requests USING brin (expires_at);
