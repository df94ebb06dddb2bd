-- Signing out: ends one session of a user, or all of them, and takes the
-- WebSocket connections they opened out of the user's registry — one
-- atomic step (every key carries the user's hash tag).
--
-- KEYS[1]  user_sessions:{<user>}     KEYS[2]  ws_conn:{<user>} (hash:
--          connection id -> "<sid> <token exp>")
-- ARGV[1]  session:{<user>}: (what precedes a sid in a session key)
-- ARGV[2]  'all' | 'one'              ARGV[3]  the sid, for 'one'
--
-- Returns {ended session ids, connection ids taken out}. Ids come from
-- the index and the registry, which hold only validated ids.
local ended
if ARGV[2] == 'all' then
  ended = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1])
else
  ended = {ARGV[3]}
  redis.call('SREM', KEYS[1], ARGV[3])
end
local gone = {}
for _, sid in ipairs(ended) do
  gone[sid] = true
  redis.call('DEL', ARGV[1] .. sid)
end
local closed = {}
local conns = redis.call('HGETALL', KEYS[2])
for i = 1, #conns, 2 do
  local sid = string.match(conns[i + 1], '^(%S+)')
  if ARGV[2] == 'all' or gone[sid] then
    closed[#closed + 1] = conns[i]
    redis.call('HDEL', KEYS[2], conns[i])
  end
end
return {ended, closed}
