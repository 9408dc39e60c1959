-- give.lua: second half of a journaled stock transfer. Adds the units taken
-- by take.lua to the destination shard, at most once per transfer id: the
-- destination's in-journal remembers every transfer it applied, so a replay
-- by a recovering instance is a no-op. Entries of the in-journal are never
-- deleted (a replay can come at any time after the donor's entry was read);
-- they are a few bytes per transfer and transfers only happen when a shard
-- runs dry. Applying bumps the destination's transfer epoch `xe` (see
-- take.lua).
--
-- KEYS[1] destination shard       HASH (fields remaining, xe)
-- KEYS[2] destination in-journal  HASH transfer_id -> units
--
-- ARGV[1] transfer id
-- ARGV[2] units
--
-- Returns 1 when applied now, 0 when it had been applied before.

if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'remaining', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'xe', 1)
return 1
