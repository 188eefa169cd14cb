-- SQLite only: the user's index holds every column a list page reads, so a page reads
-- its orders from the index alone. Before, each of a page's orders was a lookup of its
-- own in the table, and with a million orders over 10,000 users every one of them was a
-- page that the reader's cache did not hold: the list's p50 was 21-38% above the same
-- page on 10,000 orders in the runs just before (up to 49% in earlier ones). With this
-- index it was +1% and +12% in the runs alongside (README, Performance). The
-- price is a larger index written by every create and status change: about 3 pages more
-- in the WAL per commit of five creates (26 instead of 23).
--
-- PostgreSQL keeps the plain index: its list pages on a million orders were within the
-- target without this.
DROP INDEX orders_by_user;
CREATE INDEX orders_by_user ON orders (
    user_id, created_at DESC, id DESC,
    user_email, status, total_cents, updated_at, stock_verified, priced_at, lines
);
