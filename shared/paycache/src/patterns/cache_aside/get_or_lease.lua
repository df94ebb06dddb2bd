-- Cache-aside miss path: return the value, or take the load lease.
--
-- KEYS[1]  value key                 e.g. paycache:user_profile:{<uuid>}
-- KEYS[2]  lease key (same hash tag) e.g. paycache:user_profile:{<uuid>}:lock
-- ARGV[1]  lease token (random, unique per attempt)
-- ARGV[2]  lease duration in milliseconds
--
-- Returns the stored value (bulk string) if present;
--         1 if the caller now holds the lease and must load;
--         0 if another reader holds the lease (wait and ask again);
--        -1 if a writer holds it (a write is committing: read the database,
--           store nothing).
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
local holder = redis.call('GET', KEYS[2])
if holder and string.sub(holder, 1, 2) == 'w:' then
  return -1
end
return 0
