-- A command record's attempt number: 1 when recorded, one more each time a
-- retry with the same Idempotency-Key takes the record over. The command API
-- answers 503 at its Kafka deadline even while librdkafka still holds the
-- message (a frozen or unreachable broker); the delivery report may then come
-- after a retry took the record over. Marking the record failed is fenced by
-- the attempt, so a late failure of an old attempt never fails the retry's.
ALTER TABLE command_requests ADD COLUMN attempt integer NOT NULL DEFAULT 1;
