-- What the relay has published, as a watermark instead of a stamp on each event. The
-- relay publishes the outbox in id order and marks only an unbroken run from the oldest
-- pending event, so what is published is always every event up to an id. Stamping each
-- row rewrote it whole, payload included (on PostgreSQL a new row version in every index,
-- as `published_at` was indexed): a second write of every event, in the write path's
-- database. Now each batch the broker confirmed is one small row here.
-- `upto`: every event with an id up to it is published; `at`: when the mark was made
-- (microseconds), which the batches marked within a second after it share. An event's
-- publication time is the `at` of the first mark at or past its id; pruning goes by it,
-- through the index on it. The newest mark is the watermark and is never pruned.
CREATE TABLE outbox_marks (
    upto BIGINT NOT NULL PRIMARY KEY,
    at   BIGINT NOT NULL
);
CREATE INDEX outbox_marks_by_time ON outbox_marks (at);

-- The watermark of what was stamped: the published run before the oldest pending event.
INSERT INTO outbox_marks (upto, at)
SELECT upto, at FROM (
    SELECT MAX(id) AS upto, MAX(published_at) AS at FROM outbox
    WHERE published_at IS NOT NULL
      AND id < COALESCE((SELECT MIN(id) FROM outbox WHERE published_at IS NULL),
                        9223372036854775807)
) m
WHERE upto IS NOT NULL;

DROP INDEX outbox_pending;
DROP INDEX outbox_published;
ALTER TABLE outbox DROP COLUMN published_at;
