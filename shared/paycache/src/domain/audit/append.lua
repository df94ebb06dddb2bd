-- Write-behind: append one audit event to a service's buffer.
--
-- KEYS[1]  buffer list   paycache:audit_buffer:{<service>}
-- ARGV[1]  maximum number of buffered events
-- ARGV[2]  the event (JSON)
--
-- Returns the buffer's new length, or -1 if the buffer is full (nothing is
-- appended). The buffer never gets a TTL: expiring it would lose events.
local n = redis.call('LLEN', KEYS[1])
if n >= tonumber(ARGV[1]) then
  return -1
end
return redis.call('RPUSH', KEYS[1], ARGV[2])
