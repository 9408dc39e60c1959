-- take.lua: first half of a journaled stock transfer between two shards of a
-- campaign (they live in different slots, so no single script can do both).
-- Takes up to `want` units from the donor shard and journals the transfer in
-- the donor's outgoing journal BEFORE anything else happens, so that a process
-- dying right after this script leaves a record that any instance can finish
-- (see give.lua and stock::rebalance). Idempotent per transfer id.
--
-- Also, in the same step: bumps the donor's transfer epoch `xe` (the sold-out
-- proof compares it between two scans: a shard whose epoch moved may have
-- passed a unit on unseen), and adds the donor shard to its bucket's set of
-- shards with journal entries (what the periodic recovery task reads).
--
-- KEYS[1] donor shard        HASH (fields remaining, xe)
-- KEYS[2] donor out-journal  HASH transfer_id -> "units:dest_shard:taken_at_s:dest_bucket"
-- KEYS[3] bucket's pending   SET  "campaign:shard" of shards with journal entries
--
-- ARGV[1] transfer id (fresh ULID)
-- ARGV[2] units wanted (>= 1)
-- ARGV[3] destination shard number
-- ARGV[4] destination shard's bucket
-- ARGV[5] this shard as a member of KEYS[3] ("campaign:shard")
--
-- Returns the number of units taken (0 when the donor is empty; nothing is
-- journaled then).

local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then
  return tonumber(string.match(prev, '^(%d+)'))
end
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
local n = math.min(tonumber(ARGV[2]), remaining)
if n <= 0 then
  return 0
end
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], 'remaining', -n)
redis.call('HINCRBY', KEYS[1], 'xe', 1)
redis.call('HSET', KEYS[2], ARGV[1], n .. ':' .. ARGV[3] .. ':' .. t[1] .. ':' .. ARGV[4])
redis.call('SADD', KEYS[3], ARGV[5])
return n
