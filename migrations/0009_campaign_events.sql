-- flashgrab schema, version 7: campaign lifecycle events.
--
-- One row per campaign and kind (started, sold_out, closed, ended), written
-- with INSERT IGNORE by whichever instance's event publisher sees it due
-- first: the primary key makes it once per campaign across instances.
-- `published_at` makes the table a transactional outbox like `redemptions`:
-- rows are sent to the events exchange and stamped after the broker's
-- confirm (at least once; consumers deduplicate on "<campaign_id>:<kind>").
-- A publisher leases the rows it sends (`lease_owner`, `lease_until`) so
-- that two instances do not both send a row; a lease left by a publisher
-- that died runs out and another one sends the row.
CREATE TABLE IF NOT EXISTS campaign_events (
    campaign_id    CHAR(26)        NOT NULL,
    kind           ENUM('started', 'sold_out', 'closed', 'ended') NOT NULL,
    at             DATETIME(3)     NOT NULL,   -- when it happened (starts_at, ends_at, closed_at, or when sold out was seen)
    recorded_at    DATETIME(3)     NOT NULL,
    published_at   DATETIME(3)     NULL,
    lease_owner    CHAR(26)        NULL,
    lease_until    DATETIME(3)     NULL,
    PRIMARY KEY (campaign_id, kind),
    KEY idx_campaign_events_unpublished (published_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
