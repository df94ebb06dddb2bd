-- Event-driven invalidation: delete a set of keys (values and their leases,
-- all under one hash tag) and publish one message — one round trip.
--
-- KEYS     the keys to delete
-- ARGV[1]  channel ("" for none)
-- ARGV[2]  message
--
-- Returns the number of keys deleted.
local n = redis.call('DEL', unpack(KEYS))
if ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return n
