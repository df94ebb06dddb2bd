-- An announcement's progress through one registry shard, recorded after
-- each page — only while the entry is still this sender's (a sender that
-- lost it to a takeover stops instead of racing the new owner).
--
-- KEYS[1]  the partition's stream      ws_deliveries:{d<p>}
-- KEYS[2]  the entry's progress        ws_fanout:{d<p>}:<entry>
-- KEYS[3]  its connections to retry    ws_fanout:{d<p>}:<entry>:retry
-- ARGV[1]  the consumer group
-- ARGV[2]  this sender (consumer)
-- ARGV[3]  the entry id
-- ARGV[4]  the last connection id done ("" before the first; "done" when
--          the shard's end was reached)
-- ARGV[5]  the progress keys' TTL, milliseconds
-- ARGV[6]  n: how many connections follow whose post failed (to retry)
-- ARGV[7 .. 6+n]  those connections; ARGV[7+n ..] connections retried
--          successfully (no longer to retry)
--
-- The entry's idle time is reset (XCLAIM to itself), so that no other
-- sender takes over an announcement that is making progress.
-- Returns 1, or 0 when the entry is no longer pending for this sender.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
redis.call('HSET', KEYS[2], 'cursor', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local n = tonumber(ARGV[6])
for i = 7, 6 + n do
  redis.call('SADD', KEYS[3], ARGV[i])
end
for i = 7 + n, #ARGV do
  redis.call('SREM', KEYS[3], ARGV[i])
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return 1
