-- Cache-aside fill: store a freshly loaded value only while the caller
-- still holds the load lease, then release the lease.
--
-- KEYS[1]  value key
-- KEYS[2]  lease key (same hash tag)
-- ARGV[1]  encoded value (envelope)
-- ARGV[2]  TTL in milliseconds (already jittered)
-- ARGV[3]  the caller's lease token
--
-- Returns 1 if stored, 0 if the lease was lost. An invalidation deletes the
-- lease together with the value, so a load that raced with it cannot write
-- back what it read before the change (the "stale set" of plain cache-aside).
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
