-- A user's connections that may still receive frames: those whose token
-- has not expired and whose session is held. Those whose token expired or
-- whose session ended (a tombstone) are taken out of the registry and
-- returned, to be closed; those whose session Redis does not hold
-- (evicted, idled out) are returned for PostgreSQL to decide.
--
-- KEYS[1]  ws_conn:{<user>} (hash: connection id -> "<sid> <token exp>")
-- KEYS[2]  ws_conn:{<user>}:resume (hash: "<connection> <wallet>" ->
--          version: connections still catching up after a reconnect)
-- ARGV[1]  session:{<user>}: (what precedes a sid in a session key)
-- ARGV[2]  now, Unix seconds
--
-- Returns {live ids, dead ids, {id, sid, id, sid, ...} unknown, the resume
-- marks as HGETALL gives them}. One
-- script, however many connections: the sessions carry the user's hash
-- tag too.
local live, dead, unknown = {}, {}, {}
local now = tonumber(ARGV[2])
local conns = redis.call('HGETALL', KEYS[1])
for i = 1, #conns, 2 do
  local sid, exp = string.match(conns[i + 1], '^(%S+) (%d+)$')
  local v = sid and redis.call('GET', ARGV[1] .. sid)
  if sid and tonumber(exp) > now and v and v ~= 'ended' then
    live[#live + 1] = conns[i]
  elseif sid and tonumber(exp) > now and not v then
    unknown[#unknown + 1] = conns[i]
    unknown[#unknown + 1] = sid
  else
    dead[#dead + 1] = conns[i]
    redis.call('HDEL', KEYS[1], conns[i])
  end
end
return {live, dead, unknown, redis.call('HGETALL', KEYS[2])}
