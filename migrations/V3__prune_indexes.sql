-- Pruning deletes in small batches, oldest first: these find the rows to delete
-- without reading the whole table.
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
