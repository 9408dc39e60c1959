-- flashgrab schema, version 2: redemption events and report data.
--
-- Redeem and release are decided in MySQL (the coupon row, locked FOR
-- UPDATE, is the source of truth). Each decision appends a history row to
-- `redemptions` in the same transaction; `published_at` makes that table a
-- transactional outbox: a publisher in every `serve` sends unpublished rows
-- to the events exchange and stamps them (at least once: a consumer
-- deduplicates by the row id).

ALTER TABLE redemptions
    ADD COLUMN published_at DATETIME(3) NULL,
    ADD KEY idx_redemptions_unpublished (published_at, id);

-- The lines of the order a coupon is currently redeemed on (replaced on a
-- redeem, deleted on release), for the report's top products and
-- categories. `eligible` marks the lines the coupon applied to.
CREATE TABLE IF NOT EXISTS redemption_items (
    coupon_id        CHAR(26)        NOT NULL,
    line             INT UNSIGNED    NOT NULL,
    campaign_id      CHAR(26)        NOT NULL,
    product_id       VARCHAR(128)    NULL,
    category_id      VARCHAR(128)    NULL,
    line_cents       BIGINT          NOT NULL,
    eligible         BOOLEAN         NOT NULL,
    PRIMARY KEY (coupon_id, line),
    KEY idx_redemption_items_campaign (campaign_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
