-- Each order's lines again, on the order's row, as the JSON text `store::lines` writes:
-- a get or a list page then reads one row per order, not one per line. An order's lines
-- never change after its create, which writes both in one transaction; `order_items`
-- stays the lines' relational record.
--
-- Orders written before this column are filled at start-up, engine by engine (JSON is
-- not portable SQL), through the partial index; until then they are read from
-- `order_items`, as is any order an older instance still writes.
ALTER TABLE orders ADD COLUMN lines TEXT;

CREATE INDEX orders_without_lines ON orders (id) WHERE lines IS NULL;
