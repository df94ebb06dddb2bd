-- Write-behind flush, acknowledge: the batch is in PostgreSQL, drop it.
--
-- KEYS[1]  processing list
-- KEYS[2]  flush lock
-- KEYS[3]  dead-letter list      paycache:audit_buffer:{<service>}:dead
-- ARGV[1]  the flusher's token
-- ARGV[2], ...  events that could not be parsed (kept, not dropped)
--
-- Returns 1, or 0 if the lock is no longer the caller's (then nothing
-- changes, and the next lock holder inserts the batch again: the insert is
-- idempotent by event id).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV do
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
redis.call('DEL', KEYS[1])
return 1
