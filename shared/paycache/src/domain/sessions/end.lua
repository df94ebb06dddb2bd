-- Signing out: ends one session of a user, or all of them, and takes the
-- WebSocket connections they opened out of the user's registry — one
-- atomic step (every key carries the user's hash tag). An ended session's
-- key holds a tombstone ('ended') for as long as a token naming it could
-- be valid, so a check needs no PostgreSQL query to refuse it.
--
-- KEYS[1]  user_sessions:{<user>}     KEYS[2]  ws_conn:{<user>} (hash:
--          connection id -> "<sid> <token exp>")
-- ARGV[1]  session:{<user>}: (what precedes a sid in a session key)
-- ARGV[2]  'all' | 'one'              ARGV[3]  the tombstones' TTL in ms
-- ARGV[4..] sids PostgreSQL ended (the one for 'one'; validated ids)
--
-- Returns {ended session ids, connection ids taken out}. Ids come from
-- the arguments, the index and the registry, which hold only validated ids.
local ended = {}
local gone = {}
local function add(sid)
  if not gone[sid] then
    gone[sid] = true
    ended[#ended + 1] = sid
  end
end
for i = 4, #ARGV do
  add(ARGV[i])
end
if ARGV[2] == 'all' then
  for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    add(sid)
  end
  redis.call('DEL', KEYS[1])
else
  for i = 4, #ARGV do
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
for _, sid in ipairs(ended) do
  redis.call('SET', ARGV[1] .. sid, 'ended', 'PX', ARGV[3])
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
