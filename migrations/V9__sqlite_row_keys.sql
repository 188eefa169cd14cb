-- SQLite only: PostgreSQL's runner leaves out every migration named `sqlite_`. The same
-- columns, keys and constraints, laid out as SQLite reads and writes them best, which has
-- no portable spelling:
-- - an id declared exactly INTEGER PRIMARY KEY is the table's own row key. Declared
--   BIGINT, it was a second B-tree beside the table: every insert wrote both and every
--   read by id searched both (orders, outbox, product_cache).
-- - a table whose key is its whole point (an order's lines, the counts, the ledger) is
--   stored in its key's order, WITHOUT ROWID, instead of as a table plus an index of the
--   key.
-- Each create wrote twelve B-trees; it now writes seven. The tables are rebuilt, children
-- before their parents are dropped, so no foreign key ever points at a missing row.

CREATE TABLE orders_v9 (
    id             INTEGER      NOT NULL PRIMARY KEY,
    user_id        VARCHAR(100) NOT NULL,
    user_email     VARCHAR(200) NOT NULL,
    status         VARCHAR(16)  NOT NULL,
    total_cents    BIGINT       NOT NULL,
    created_at     BIGINT       NOT NULL,
    updated_at     BIGINT       NOT NULL,
    stock_verified INTEGER      NOT NULL DEFAULT 1,
    priced_at      BIGINT,
    lines          TEXT
);
INSERT INTO orders_v9 (id, user_id, user_email, status, total_cents, created_at, updated_at,
                       stock_verified, priced_at, lines)
SELECT id, user_id, user_email, status, total_cents, created_at, updated_at,
       stock_verified, priced_at, lines
FROM orders ORDER BY id;

CREATE TABLE order_items_v9 (
    order_id       BIGINT       NOT NULL REFERENCES orders_v9 (id),
    line_no        INTEGER      NOT NULL,
    product_id     BIGINT       NOT NULL,
    product_name   VARCHAR(500) NOT NULL,
    quantity       INTEGER      NOT NULL,
    price_cents    BIGINT       NOT NULL,
    subtotal_cents BIGINT       NOT NULL,
    PRIMARY KEY (order_id, line_no)
) WITHOUT ROWID;
INSERT INTO order_items_v9 (order_id, line_no, product_id, product_name, quantity,
                            price_cents, subtotal_cents)
SELECT order_id, line_no, product_id, product_name, quantity, price_cents, subtotal_cents
FROM order_items ORDER BY order_id, line_no;

DROP TABLE order_items;
DROP TABLE orders;
-- Renaming a parent rewrites its children's REFERENCES (SQLite 3.26 and later).
ALTER TABLE orders_v9 RENAME TO orders;
ALTER TABLE order_items_v9 RENAME TO order_items;
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_without_lines ON orders (id) WHERE lines IS NULL;

CREATE TABLE outbox_v9 (
    id            INTEGER     NOT NULL PRIMARY KEY,
    order_id      BIGINT      NOT NULL,
    event_type    VARCHAR(32) NOT NULL,
    payload       TEXT        NOT NULL,
    created_at    BIGINT      NOT NULL,
    published_at  BIGINT,
    blocked_since BIGINT,
    tx            BIGINT
);
INSERT INTO outbox_v9 (id, order_id, event_type, payload, created_at, published_at,
                       blocked_since, tx)
SELECT id, order_id, event_type, payload, created_at, published_at, blocked_since, tx
FROM outbox ORDER BY id;
DROP TABLE outbox;
ALTER TABLE outbox_v9 RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_blocked ON outbox (id) WHERE blocked_since IS NOT NULL;

CREATE TABLE order_counts_v9 (
    user_id VARCHAR(100) NOT NULL PRIMARY KEY,
    orders  BIGINT       NOT NULL
) WITHOUT ROWID;
INSERT INTO order_counts_v9 (user_id, orders)
SELECT user_id, orders FROM order_counts ORDER BY user_id;
DROP TABLE order_counts;
ALTER TABLE order_counts_v9 RENAME TO order_counts;

CREATE TABLE stock_ledger_v9 (
    product_id BIGINT  NOT NULL,
    sold_at    BIGINT  NOT NULL,
    order_id   BIGINT  NOT NULL,
    quantity   INTEGER NOT NULL,
    PRIMARY KEY (product_id, sold_at, order_id)
) WITHOUT ROWID;
INSERT INTO stock_ledger_v9 (product_id, sold_at, order_id, quantity)
SELECT product_id, sold_at, order_id, quantity FROM stock_ledger
ORDER BY product_id, sold_at, order_id;
DROP TABLE stock_ledger;
ALTER TABLE stock_ledger_v9 RENAME TO stock_ledger;

CREATE TABLE product_cache_v9 (
    product_id  INTEGER      NOT NULL PRIMARY KEY,
    name        VARCHAR(500) NOT NULL,
    price_cents BIGINT       NOT NULL,
    stock       BIGINT       NOT NULL,
    fetched_at  BIGINT       NOT NULL
);
INSERT INTO product_cache_v9 (product_id, name, price_cents, stock, fetched_at)
SELECT product_id, name, price_cents, stock, fetched_at FROM product_cache
ORDER BY product_id;
DROP TABLE product_cache;
ALTER TABLE product_cache_v9 RENAME TO product_cache;
