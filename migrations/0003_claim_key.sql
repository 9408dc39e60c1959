-- flashgrab schema, version 3: the claim's Idempotency-Key on its row.
--
-- The claim record carries the key of a keyed claim (lua/claim.lua), and
-- the persist worker stores it here. Redis holds the key too (the shard's
-- idem hash), but a failover in `fast` mode can lose a grant that was
-- already persisted; `flashgrab reconcile --repair` then writes the grant
-- back into Redis from this row, key included, so that the client's retry
-- with the same key finds its coupon instead of claiming a second one.
-- NULL: the claim had no key (or was persisted before this migration).

ALTER TABLE coupons
    ADD COLUMN idempotency_key VARCHAR(64) NULL;
