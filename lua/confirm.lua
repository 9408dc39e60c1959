-- confirm.lua: `replicated` mode, before a recovering instance replays the
-- give of a transfer it found journaled. The take may never have reached a
-- replica (its WAIT failed, or its process died before the WAIT): giving
-- then, and losing the take in a failover of the donor, would create units.
-- This rewrites the entry as it is, a write in the donor's slot, so that the
-- `WAIT 1` pipelined right behind it on the same connection counts the
-- replicas that hold the entry (and the take that wrote it). Checked and
-- rewritten in one step: an entry read earlier but gone now is not revived.
--
-- KEYS[1] donor out-journal  HASH transfer_id -> entry (see take.lua)
--
-- ARGV[1] transfer id
--
-- Returns the entry, or nil when the transfer has been finished meanwhile.

local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], entry)
return entry
