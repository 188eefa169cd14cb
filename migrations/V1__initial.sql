-- Portable SQL: runs on SQLite and on PostgreSQL unchanged.
-- Ids are assigned by the writer (one writer per database), so no engine-specific
-- autoincrement is needed. Times are microseconds since the Unix epoch, UTC.
-- Money is integer cents.

CREATE TABLE orders (
    id          BIGINT       NOT NULL PRIMARY KEY,
    user_id     VARCHAR(100) NOT NULL,
    user_email  VARCHAR(200) NOT NULL,
    status      VARCHAR(16)  NOT NULL,
    total_cents BIGINT       NOT NULL,
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL
);

CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);

CREATE TABLE order_items (
    order_id       BIGINT       NOT NULL REFERENCES orders (id),
    line_no        INTEGER      NOT NULL,
    product_id     BIGINT       NOT NULL,
    product_name   VARCHAR(500) NOT NULL,
    quantity       INTEGER      NOT NULL,
    price_cents    BIGINT       NOT NULL,
    subtotal_cents BIGINT       NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- One row per committed change, written in the change's transaction.
-- published_at IS NULL means the broker has not confirmed it yet.
CREATE TABLE outbox (
    id           BIGINT      NOT NULL PRIMARY KEY,
    order_id     BIGINT      NOT NULL,
    event_type   VARCHAR(32) NOT NULL,
    payload      TEXT        NOT NULL,
    created_at   BIGINT      NOT NULL,
    published_at BIGINT
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- A completed create, kept so that a repeat of the same request answers the same.
CREATE TABLE idempotency_keys (
    user_id         VARCHAR(100) NOT NULL,
    idem_key        VARCHAR(200) NOT NULL,
    request         TEXT         NOT NULL,
    response_status INTEGER      NOT NULL,
    response_body   TEXT         NOT NULL,
    created_at      BIGINT       NOT NULL,
    PRIMARY KEY (user_id, idem_key)
);

-- The last good answer of the product service for each product (offline policy).
CREATE TABLE product_cache (
    product_id  BIGINT       NOT NULL PRIMARY KEY,
    name        VARCHAR(500) NOT NULL,
    price_cents BIGINT       NOT NULL,
    stock       BIGINT       NOT NULL,
    fetched_at  BIGINT       NOT NULL
);
