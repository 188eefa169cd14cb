-- A product the product service says it no longer knows, or that a complete catalog
-- refresh no longer lists, stays in the snapshot as gone, stamped with when it was so
-- answered, instead of being deleted. An answer stamped before then (a slow lookup, a
-- catalog page read earlier) that commits after it meets the row and its newer stamp, as
-- every write of a snapshot row does, and does not put the product back: deleted, the row
-- left nothing to meet, and the product came back and was sold offline. Offline sales,
-- and the snapshot's counts, read only the products known. Gone rows older than an hour,
-- past any answer still on its way, are pruned with the outbox.
ALTER TABLE product_cache ADD COLUMN gone INTEGER NOT NULL DEFAULT 0;
