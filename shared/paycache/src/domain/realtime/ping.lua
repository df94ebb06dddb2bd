-- `ping`: keeps a connection registered only while its sign-in lives.
--
-- KEYS[1]  ws_conn:{<user>} (hash: connection id -> "<sid> <token exp>")
-- ARGV[1]  session:{<user>}:   ARGV[2]  the connection id
-- ARGV[3]  now, Unix seconds   ARGV[4]  the registry's TTL in ms
--
-- Returns 1 (alive: the registry's TTL is refreshed), 0 (not registered),
-- -1 (its token expired or its session ended: taken out, to be closed) or
-- 2 (its session is not in Redis: PostgreSQL decides).
-- A ping does not refresh the session: an open socket is not activity of
-- its user, and the session's idle timeout keeps its meaning.
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then
  return 0
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
