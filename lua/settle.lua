-- settle.lua: drops a shard from its bucket's set of shards with journal
-- entries (see take.lua) once its out-journal is empty, checked and removed
-- in one step so that a take journaling at the same moment keeps it listed.
--
-- KEYS[1] shard's out-journal  HASH
-- KEYS[2] bucket's pending     SET "campaign:shard"
--
-- ARGV[1] the shard's member ("campaign:shard")
--
-- Returns 1 when removed, 0 when the journal still holds entries.

if redis.call('HLEN', KEYS[1]) > 0 then
  return 0
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
