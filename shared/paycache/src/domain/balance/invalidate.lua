-- Invalidate a cached balance (event-driven invalidation).
--
-- KEYS[1]  balance value key
-- KEYS[2]  its lease key
--
-- Deletes the value and a reader's lease (so an in-flight load stores
-- nothing), but keeps a writer's fence: lifting it early would let a reader
-- cache the pre-commit row. Returns the number of keys deleted.
local n = redis.call('DEL', KEYS[1])
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, 2) ~= 'w:' then
  n = n + redis.call('DEL', KEYS[2])
end
return n
