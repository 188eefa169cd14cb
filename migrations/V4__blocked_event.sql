-- When the broker keeps refusing an event, the relay writes here when it first refused it
-- (microseconds): `outbox status`, /ready and /metrics name that event until it is published.
ALTER TABLE outbox ADD COLUMN blocked_since BIGINT;

CREATE INDEX outbox_blocked ON outbox (id) WHERE blocked_since IS NOT NULL;
