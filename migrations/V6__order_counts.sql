-- How many orders each user has: the list's `total` without counting a big user's orders
-- on every page (kept by the create's own transaction).
CREATE TABLE order_counts (
    user_id VARCHAR(100) NOT NULL PRIMARY KEY,
    orders  BIGINT       NOT NULL
);

INSERT INTO order_counts (user_id, orders)
SELECT user_id, COUNT(*) FROM orders GROUP BY user_id;
