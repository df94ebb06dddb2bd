-- Write-behind flush, claim: move a batch from the buffer to the
-- processing list, atomically, for the flusher that holds the lock.
--
-- KEYS[1]  buffer list           paycache:audit_buffer:{<service>}
-- KEYS[2]  processing list       paycache:audit_buffer:{<service>}:processing
-- KEYS[3]  flush lock            paycache:audit_buffer:{<service>}:flushlock
-- ARGV[1]  the flusher's token
-- ARGV[2]  batch size
--
-- Returns the processing list (the batch to insert), or false if the lock
-- is not the caller's. A non-empty processing list is a batch a previous
-- flusher claimed and did not acknowledge (it died, or lost its lock): it is
-- returned again as is, before anything new is claimed.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return false
end
if redis.call('LLEN', KEYS[2]) == 0 then
  for i = 1, tonumber(ARGV[2]) do
    if not redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') then
      break
    end
  end
end
return redis.call('LRANGE', KEYS[2], 0, -1)
