-- restore.lua: give a shard back grants it forgot (`flashgrab reconcile
-- --repair`). In `fast` mode a failover can lose grants the relay had
-- already shipped: MySQL holds their rows, the promoted replica knows
-- nothing of them, so their units are back in stock and their users could
-- claim again. This script writes such a grant back exactly as the claim
-- script would have left it (claim record, holder entry, idempotency key,
-- one unit less), without an outbox entry (the row exists already).
-- Idempotent per coupon id: a grant already present is left alone, so a
-- repair run twice restores once.
--
-- KEYS[1] shard    HASH  remaining, ... (see claim.lua)
-- KEYS[2] holders  HASH  user_id -> "cid1,cid2,..."
-- KEYS[3] coupons  HASH  coupon_id -> claim record (JSON)
-- KEYS[4] idem     HASH  user_id .. "\n" .. idempotency_key -> coupon_id
--
-- ARGV[1] "grants": then four per grant, for grants i = 0, 1, ...:
--           ARGV[2+4i] coupon id, ARGV[3+4i] user id,
--           ARGV[4+4i] claim record (JSON), ARGV[5+4i] idempotency key ("" none)
--         returns one code per grant, in order:
--           0  already in this shard: nothing changed
--           1  restored, and one unit taken from this shard's stock
--           2  restored, but this shard had no unit left: the caller takes
--              one from another shard ("unit"), or, if none has one, the
--              unit was handed out again meanwhile (an oversell to report)
--         An idempotency key already pointing at another coupon (the
--         client retried after the failover and got a new one) is left as
--         it is.
-- ARGV[1] "unit": takes one unit from this shard for a grant restored on
--         another one; returns 1, or 0 when this shard has none.

local mode = ARGV[1]

local function take_unit()
  local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
  if remaining > 0 then
    redis.call('HINCRBY', KEYS[1], 'remaining', -1)
    return true
  end
  return false
end

if mode == 'unit' then
  if take_unit() then
    return 1
  end
  return 0
end

if mode ~= 'grants' or #ARGV < 5 or (#ARGV - 1) % 4 ~= 0 then
  return redis.error_reply('restore.lua: ARGV must be "unit", or "grants" then coupon, user, record, key per grant')
end

local out = {}
for i = 0, (#ARGV - 1) / 4 - 1 do
  local coupon, user, record, key = ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  if redis.call('HEXISTS', KEYS[3], coupon) == 1 then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[3], coupon, record)
    local held = redis.call('HGET', KEYS[2], user)
    if not held then
      redis.call('HSET', KEYS[2], user, coupon)
    elseif not string.find(',' .. held .. ',', ',' .. coupon .. ',', 1, true) then
      redis.call('HSET', KEYS[2], user, held .. ',' .. coupon)
    end
    if key ~= '' then
      redis.call('HSETNX', KEYS[4], user .. '\n' .. key, coupon)
    end
    if take_unit() then
      out[#out + 1] = 1
    else
      out[#out + 1] = 2
    end
  end
end
return out
