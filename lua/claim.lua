-- claim.lua: grant one coupon from the user's home shard, atomically.
--
-- This script is the single point of truth for a grant: the window check
-- (against Redis's own clock), the idempotency key, the per-user limit, the
-- stock decrement, the holder record and the outbox append happen in one
-- atomic step on ONE slot (every key shares the shard's bucket hash tag).
--
-- KEYS[1] shard    HASH  remaining, starts_ms, ends_ms, closed, limit,
--                         vfrom_ms, vuntil_ms, vdays (0 = unset)
-- KEYS[2] holders  HASH  user_id -> "cid1,cid2,..." coupons the user holds here
-- KEYS[3] coupons  HASH  coupon_id -> claim record (JSON); its HLEN is the
--                         number of grants of the shard (no separate counter:
--                         one write less per grant)
-- KEYS[4] idem     HASH  user_id .. "\n" .. idempotency_key -> coupon_id
-- KEYS[5] outbox   STREAM of the shard's bucket; field "r" = claim record
--
-- ARGV[1] user_id
-- ARGV[2] coupon_id to use if a coupon is granted (fresh ULID)
-- ARGV[3] idempotency key, "" when none
-- ARGV[4] campaign_id
-- ARGV[5] shard number
--
-- Returns an array whose first element is the outcome code:
--   {1, record}          granted: record is the claim record JSON
--   {2, record}          idempotent replay: the coupon granted before for this key
--   {3, "cid1,cid2"}     the user holds `limit` coupons already (their ids)
--   {4, starts_ms}       not started yet
--   {5}                  ended (past ends_ms, or closed)
--   {6}                  this shard is out of stock (others may not be)
--   {0}                  the shard does not exist (unknown campaign)
-- Errors only on a broken store (e.g. OOM); the caller then answers 503.

local shard = KEYS[1]
local conf = redis.call('HMGET', shard, 'remaining', 'starts_ms', 'ends_ms', 'closed', 'limit',
  'vfrom_ms', 'vuntil_ms', 'vdays')
if not conf[1] then
  return {0}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local starts = tonumber(conf[2])
if now < starts then
  return {4, starts}
end
if conf[4] == '1' or now >= tonumber(conf[3]) then
  return {5}
end

local user = ARGV[1]
local idem_field = nil
if ARGV[3] ~= '' then
  idem_field = user .. '\n' .. ARGV[3]
  local prev = redis.call('HGET', KEYS[4], idem_field)
  if prev then
    return {2, redis.call('HGET', KEYS[3], prev)}
  end
end

local held = redis.call('HGET', KEYS[2], user)
local count = 0
if held then
  count = select(2, string.gsub(held, ',', ',')) + 1
end
if count >= tonumber(conf[5]) then
  return {3, held}
end

if tonumber(conf[1]) <= 0 then
  return {6}
end

local vfrom = tonumber(conf[6])
if vfrom == 0 then
  vfrom = now
end
local vuntil = tonumber(conf[7])
if vuntil == 0 then
  vuntil = now + tonumber(conf[8]) * 86400000
end

-- The record is built by hand (cjson.encode of a table costs more than the
-- rest of the script's Lua); only the user id needs escaping, the other
-- fields are ULIDs and integers.
local coupon = ARGV[2]
local record = '{"id":"' .. coupon .. '","campaign_id":"' .. ARGV[4] .. '","user_id":' .. cjson.encode(user)
  .. ',"shard":' .. ARGV[5] .. ',"claimed_at_ms":' .. string.format('%d', now)
  .. ',"valid_from_ms":' .. string.format('%d', vfrom) .. ',"valid_until_ms":' .. string.format('%d', vuntil) .. '}'

redis.call('HINCRBY', shard, 'remaining', -1)
if held then
  redis.call('HSET', KEYS[2], user, held .. ',' .. coupon)
else
  redis.call('HSET', KEYS[2], user, coupon)
end
redis.call('HSET', KEYS[3], coupon, record)
if idem_field then
  redis.call('HSET', KEYS[4], idem_field, coupon)
end
redis.call('XADD', KEYS[5], '*', 'r', record)
return {1, record}
