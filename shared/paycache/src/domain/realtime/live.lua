-- A user's connections that may still receive frames: those whose token
-- has not expired and whose session still exists. The others are taken
-- out of the registry and returned, to be closed.
--
-- KEYS[1]  ws_conn:{<user>} (hash: connection id -> "<sid> <token exp>")
-- ARGV[1]  session:{<user>}: (what precedes a sid in a session key)
-- ARGV[2]  now, Unix seconds
--
-- Returns {live connection ids, dead connection ids}. One script, however
-- many connections: the sessions carry the user's hash tag too.
local live, dead = {}, {}
local now = tonumber(ARGV[2])
local conns = redis.call('HGETALL', KEYS[1])
for i = 1, #conns, 2 do
  local sid, exp = string.match(conns[i + 1], '^(%S+) (%d+)$')
  if sid and tonumber(exp) > now and redis.call('EXISTS', ARGV[1] .. sid) == 1 then
    live[#live + 1] = conns[i]
  else
    dead[#dead + 1] = conns[i]
    redis.call('HDEL', KEYS[1], conns[i])
  end
end
return {live, dead}
