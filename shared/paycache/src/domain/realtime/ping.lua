-- `ping`: keeps a connection registered only while its sign-in lives, and
-- only while it pings no more often than its limit.
--
-- KEYS[1]  ws_conn:{<user>} (hash: connection id -> "<sid> <token exp>")
-- KEYS[2]  ws_conn:{<user>}:pings:<connection> (this minute's pings)
-- ARGV[1]  session:{<user>}:   ARGV[2]  the connection id
-- ARGV[3]  now, Unix seconds   ARGV[4]  the registry's TTL in ms
-- ARGV[5]  the most pings per connection per minute
--
-- Returns 1 (alive: the registry's TTL is refreshed), 0 (not registered),
-- -1 (its token expired or its session ended: taken out, to be closed),
-- -2 (over its pings: taken out, to be closed) or 2 (its session is not in
-- Redis: PostgreSQL decides).
-- A ping does not refresh the session: an open socket is not activity of
-- its user, and the session's idle timeout keeps its meaning.
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then
  return 0
end
local pings = redis.call('INCR', KEYS[2])
if pings == 1 then
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if pings > tonumber(ARGV[5]) then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return -2
end
local sid, exp = string.match(v, '^(%S+) (%d+)$')
if sid and tonumber(exp) > tonumber(ARGV[3]) then
  local s = redis.call('GET', ARGV[1] .. sid)
  if s and s ~= 'ended' then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return 1
  elseif not s then
    return 2
  end
end
redis.call('HDEL', KEYS[1], ARGV[2])
return -1
