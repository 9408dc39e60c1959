-- flashgrab schema, version 6: archived campaigns.
--
-- Once a campaign has ended (or was closed), every grant is persisted and
-- reconcile matches, its per-shard Redis keys (stock, holders, claim
-- records, idempotency keys, transfer journals) are deleted: about 300
-- bytes per grant would otherwise stay in Redis forever (see
-- docs/OPERATIONS.md, "Sizing"). From then on MySQL is the only copy:
-- `archived_at` says so (stats, reconcile and claims read MySQL), and
-- `archived_claimed` keeps the number of grants Redis held at that moment,
-- which reconcile compares the rows with afterwards.
-- NULL: the campaign still lives in Redis.

ALTER TABLE campaigns
    ADD COLUMN archived_at DATETIME(3) NULL,
    ADD COLUMN archived_claimed BIGINT NULL;
