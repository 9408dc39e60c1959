-- flashgrab schema, version 7: what the console's API additions need.
--
-- campaign_requests: the Idempotency-Key of POST /v1/campaigns. A form
-- submitted twice (a double click, a retry after a timeout) must make one
-- drop: the key is stored with a hash of the body in the same transaction
-- as the campaign row, so a second request with the key finds the first
-- one's campaign (same body) or is refused (another body). Rows are kept:
-- a few dozen bytes per campaign created.
CREATE TABLE campaign_requests (
    idempotency_key VARCHAR(64) NOT NULL PRIMARY KEY,
    body_sha256     CHAR(64)    NOT NULL,
    campaign_id     CHAR(26)    NOT NULL,
    created_at      DATETIME(3) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- campaign_topups: the journal of total_stock increases (PATCH). The new
-- units are added to every shard in Redis, one idempotent step per shard
-- (give.lua keyed by the top-up id), and only then total_stock grows, in
-- the same transaction that marks the row applied. A process that dies
-- half-way leaves the row with applied_at NULL; the recovery pass of any
-- instance replays the shard steps (each a no-op the second time) and
-- applies it. So at rest remaining + claimed == total_stock still holds.
CREATE TABLE campaign_topups (
    id          CHAR(26)    NOT NULL PRIMARY KEY,
    campaign_id CHAR(26)    NOT NULL,
    units       BIGINT      NOT NULL,
    created_at  DATETIME(3) NOT NULL,
    applied_at  DATETIME(3) NULL,
    KEY pending (applied_at, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
