-- ack.lua: acknowledge and delete outbox entries the broker has confirmed.
-- XACK alone would leave the entries in the stream forever; XDEL alone would
-- leave them in the group's pending list. Doing both in one script keeps the
-- stream bounded by what is not yet confirmed, even if the relay dies.
--
-- KEYS[1] outbox stream
-- ARGV[1] consumer group
-- ARGV[2..] entry ids
--
-- Returns the number of entries deleted.

local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids == 0 then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
