-- flashgrab schema, version 8: a user's coupons, newest first, by pages;
-- the campaigns live at a given time.
--
-- `GET /v1/me/coupons` reads a user's rows newest first (by id: coupon
-- ids are ULIDs, time-ordered) from a keyset cursor (`id < ?`), a page at
-- a time. `idx_coupons_user_campaign` serves that with a campaign filter
-- (InnoDB appends the primary key, so it is (user_id, campaign_id, id));
-- without one it would sort all the user's rows for every page. This
-- index reads a page straight off (user_id, id).
--
-- A coupon found neither in MySQL nor in the holdings index (claimed a
-- moment ago, not relayed yet) is looked up in the campaigns that were
-- live when it was claimed (`ends_at >= t - margin AND starts_at <= t +
-- margin`): `idx_campaigns_ends_at` reads only the campaigns ending after
-- that time, not every campaign ever run.
--
-- (Numbered 8: 7 is left to a change made alongside; a gap is fine.)

ALTER TABLE coupons
    ADD KEY idx_coupons_user_id (user_id, id);

ALTER TABLE campaigns
    ADD KEY idx_campaigns_ends_at (ends_at);
