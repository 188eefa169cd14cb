-- SQLite only: the user's index holds every column a list page reads, so a page reads
-- its orders from the index alone. Before, each of a page's orders was a lookup of its
-- own in the table, and with a million orders over 10,000 users every one of them was a
-- page that the reader's cache did not hold: the list's p50 was 21-38% above the same
-- page on 10,000 orders in the runs just before (up to 49% in earlier ones). With this
-- index it was +1% and +12% in the runs alongside (benches/MEASUREMENTS.md). The
-- price is a larger index written by every create, status change and fill of an
-- order's lines: about 3 pages more in the WAL per commit of five creates (26 instead
-- of 23).
--
-- PostgreSQL keeps the plain index: its list pages on a million orders were within the
-- target without this. The index has the same name and two definitions: a later
-- migration that touches it must allow for both.

-- Orders written before V8 get their lines here, before the index holds them. Left to
-- the start-up fill (store/fill.rs), each order's new lines went into this index as
-- well, at a random place in it: on a million orders of two lines the fill took 37.5 s
-- instead of 2.9 s, in steps that each held the writer 13 times as long. The same
-- arrays as `store::lines::encode` writes, and as the fill does.
UPDATE orders SET lines = (
    SELECT json_group_array(json_array(product_id, product_name, quantity,
      price_cents, subtotal_cents) ORDER BY line_no)
    FROM order_items WHERE order_id = orders.id)
WHERE lines IS NULL;

DROP INDEX orders_by_user;
CREATE INDEX orders_by_user ON orders (
    user_id, created_at DESC, id DESC,
    user_email, status, total_cents, updated_at, stock_verified, priced_at, lines
);
