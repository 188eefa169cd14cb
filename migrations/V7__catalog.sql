-- The offline policy. `product_cache` becomes the catalog snapshot: rows come from the
-- product service's list (refreshed every CATALOG_REFRESH seconds), from every good single
-- lookup, and from `catalog import`.

-- How an order was priced. Orders from before this migration were all verified live:
-- stock_verified 1 and priced_at unknown (NULL).
ALTER TABLE orders ADD COLUMN stock_verified INTEGER NOT NULL DEFAULT 1;
ALTER TABLE orders ADD COLUMN priced_at BIGINT;

-- What this store sold of each product, line by line, in the order's transaction. Only the
-- entries sold at or after the product's snapshot row was fetched count against its stock
-- offline; a fresh row leaves the older ones behind, and a refresh deletes them.
CREATE TABLE stock_ledger (
    product_id BIGINT  NOT NULL,
    sold_at    BIGINT  NOT NULL,
    order_id   BIGINT  NOT NULL,
    quantity   INTEGER NOT NULL,
    PRIMARY KEY (product_id, sold_at, order_id)
);

-- One row: the last complete refresh of the snapshot (the whole list, a file catalog, or
-- an import), for `catalog status`, /ready and /metrics.
CREATE TABLE catalog_refresh (
    id           INTEGER      NOT NULL PRIMARY KEY,
    refreshed_at BIGINT       NOT NULL,
    products     BIGINT       NOT NULL,
    source       VARCHAR(500) NOT NULL
);
