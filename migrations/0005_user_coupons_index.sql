-- flashgrab schema, version 5: a user's coupons, newest first, by pages.
--
-- `GET /v1/me/coupons` reads a user's rows newest first (by id: coupon
-- ids are ULIDs, time-ordered) from a keyset cursor (`id < ?`), a page at
-- a time. `idx_coupons_user_campaign` serves that with a campaign filter
-- (InnoDB appends the primary key, so it is (user_id, campaign_id, id));
-- without one it would sort all the user's rows for every page. This
-- index reads a page straight off (user_id, id).

ALTER TABLE coupons
    ADD KEY idx_coupons_user_id (user_id, id);
