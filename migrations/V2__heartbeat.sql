-- One row, rewritten by each readiness check: proof that the database takes a write.
CREATE TABLE heartbeat (
    id      INTEGER NOT NULL PRIMARY KEY,
    beat_at BIGINT  NOT NULL
);
