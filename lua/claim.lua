-- claim.lua: grant coupons from one shard, atomically, for a batch of
-- claims (one or more users) that arrived together for that shard.
--
-- This script is the single point of truth for a grant: the window check
-- (against Redis's own clock), the idempotency key, the per-user limit, the
-- stock decrement, the holder record and the outbox append happen in one
-- atomic step on ONE slot (every key shares the shard's bucket hash tag).
--
-- Idempotent per coupon id: the client library resends a call after a
-- dropped connection or an I/O error, and the first copy may have run. A
-- claim whose coupon id already has a record here was granted by that
-- first copy: it is answered {1, that record} again and nothing changes
-- (no second decrement, holder entry, record or outbox entry). So a batch
-- run twice answers the same and leaves the same state as run once (a
-- claim refused the first time is decided again, and refusals change
-- nothing). The grant is recognised by its coupon id in the user's holder
-- entry, which the limit check reads anyway (a per-claim lookup of the
-- record cost the claim path measurably). Checked before the window, so
-- that neither a re-run nor a keyed replay after the end is answered
-- "ended".
--
-- The claims of a batch are decided one after the other, exactly as if each
-- had been its own call (a user twice in one batch gets one grant and one
-- "holding"); batching only saves the per-call cost (the round trip, the
-- script call, reading the shard's terms and the clock once).
--
-- KEYS[1] shard    HASH  remaining, starts_ms, ends_ms, closed, limit,
--                         vfrom_ms, vuntil_ms, vdays (0 = unset)
-- KEYS[2] holders  HASH  user_id -> "cid1,cid2,..." coupons the user holds here
-- KEYS[3] coupons  HASH  coupon_id -> claim record (JSON); its HLEN is the
--                         number of grants of the shard (no separate counter:
--                         one write less per grant). The record carries
--                         "idempotency_key" when the claim had one (so that
--                         MySQL keeps it and reconcile can restore it)
-- KEYS[4] idem     HASH  user_id .. "\n" .. idempotency_key -> coupon_id
-- KEYS[5] outbox   STREAM of the shard's bucket; field "r" = claim record
--
-- ARGV[1] campaign_id
-- ARGV[2] shard number
-- then three per claim, for claims i = 0, 1, ...:
-- ARGV[3+3i] user_id
-- ARGV[4+3i] coupon_id to use if a coupon is granted (fresh ULID)
-- ARGV[5+3i] idempotency key, "" when none
--
-- Returns an array with one reply per claim, in order; a reply is an array
-- whose first element is the outcome code:
--   {1, record}          granted: record is the claim record JSON (also the
--                        answer of a re-run of a granted claim, see above)
--   {2, record}          idempotent replay: the coupon granted before for this
--                        key (also after the end or the close)
--   {3, "cid1,cid2"}     the user holds `limit` coupons already (their ids)
--   {4, starts_ms}       not started yet
--   {5}                  ended (past ends_ms, or closed)
--   {6}                  this shard is out of stock (others may not be)
--   {0}                  the shard does not exist (unknown campaign)
-- A call that only answered earlier grants (re-runs, replays) writes one
-- no-op (HINCRBY remaining 0) so that a WAIT behind it covers them.
-- Errors only on a broken store (e.g. OOM) or a malformed call; the caller
-- then answers 503 to every claim of the batch.

if #ARGV < 5 or (#ARGV - 2) % 3 ~= 0 then
  return redis.error_reply('claim.lua: ARGV must be campaign, shard, then user, coupon, key per claim')
end
local n = (#ARGV - 2) / 3

-- The same reply for every claim of the batch.
local function all(reply)
  local out = {}
  for i = 1, n do
    out[i] = reply
  end
  return out
end

local shard = KEYS[1]
local conf = redis.call('HMGET', shard, 'remaining', 'starts_ms', 'ends_ms', 'closed', 'limit',
  'vfrom_ms', 'vuntil_ms', 'vdays')
if not conf[1] then
  return all({0})
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Before the start nothing can have been granted (the window never
-- moves), so no claim can be a re-run or a replay: one answer for all.
local starts = tonumber(conf[2])
if now < starts then
  return all({4, starts})
end
-- After the end (or the close) a claim may still be a re-run or a keyed
-- replay of a grant made in time: decided per claim, below.
local ended = conf[4] == '1' or now >= tonumber(conf[3])

local remaining = tonumber(conf[1])
local limit = tonumber(conf[5])
local vfrom = tonumber(conf[6])
if vfrom == 0 then
  vfrom = now
end
local vuntil = tonumber(conf[7])
if vuntil == 0 then
  vuntil = now + tonumber(conf[8]) * 86400000
end
-- The parts of a claim record every grant of this call shares. The record is
-- built by hand (cjson.encode of a table costs more than the rest of the
-- script's Lua); only the user id and the key need escaping, the other
-- fields are ULIDs and integers.
local mid = '","campaign_id":"' .. ARGV[1] .. '","user_id":'
local tail = ',"shard":' .. ARGV[2] .. ',"claimed_at_ms":' .. string.format('%d', now)
  .. ',"valid_from_ms":' .. string.format('%d', vfrom) .. ',"valid_until_ms":' .. string.format('%d', vuntil)

local granted = 0
-- Set when a claim was answered from an earlier grant (re-run or replay).
local answered_before = false
local function claim(user, coupon, key)
  local idem_field = nil
  if key ~= '' then
    idem_field = user .. '\n' .. key
    local prev = redis.call('HGET', KEYS[4], idem_field)
    if prev then
      answered_before = true
      -- Its own re-run (same fresh coupon id) is answered as the grant it
      -- was; another request with the key is a replay of that grant.
      return {prev == coupon and 1 or 2, redis.call('HGET', KEYS[3], prev)}
    end
  end

  local held = redis.call('HGET', KEYS[2], user)
  local count = 0
  if held then
    -- A re-run of this very claim: the caller's client resent the call
    -- after a dropped connection or an I/O error, and the first copy had
    -- already run. The coupon id is fresh per request and its grant put it
    -- in the user's holder entry (which is read here anyway for the limit,
    -- so the check costs no Redis call; the entry loses the id only by a
    -- release, which needs the answer this claim is still waiting for):
    -- answer the grant again (the caller asked once, it gets its 201) and
    -- change nothing.
    if string.find(held, coupon, 1, true) then
      answered_before = true
      return {1, redis.call('HGET', KEYS[3], coupon)}
    end
    count = select(2, string.gsub(held, ',', ',')) + 1
  end

  if ended then
    return {5}
  end
  if count >= limit then
    return {3, held}
  end

  if remaining <= 0 then
    return {6}
  end
  remaining = remaining - 1
  granted = granted + 1

  local record
  if idem_field then
    record = '{"id":"' .. coupon .. mid .. cjson.encode(user) .. tail .. ',"idempotency_key":' .. cjson.encode(key) .. '}'
  else
    record = '{"id":"' .. coupon .. mid .. cjson.encode(user) .. tail .. '}'
  end
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
end

local out = {}
for i = 0, n - 1 do
  out[i + 1] = claim(ARGV[3 + 3 * i], ARGV[4 + 3 * i], ARGV[5 + 3 * i])
end
if granted > 0 then
  -- One decrement for the whole batch (the script is atomic: nobody sees
  -- the records before the count).
  redis.call('HINCRBY', shard, 'remaining', -granted)
elseif answered_before then
  -- A write that changes no value, so that a `WAIT` pipelined behind this
  -- call (replicated mode) has an offset to wait for: a replica that
  -- acknowledges it has everything before it, the earlier grant included.
  -- Without it a call that wrote nothing leaves its connection's offset
  -- where it was, and WAIT answers at once, proving nothing.
  redis.call('HINCRBY', shard, 'remaining', 0)
end
return out
