-- On PostgreSQL, the transaction that wrote each event (its 64-bit id). Several sessions
-- write at once there, and an event id is taken before its transaction commits, so a
-- lower id can commit after a higher one: the relay publishes a pending event only once
-- every transaction older than it has ended (see src/store/postgres/). SQLite has one
-- writer and leaves it NULL.
ALTER TABLE outbox ADD COLUMN tx BIGINT;
