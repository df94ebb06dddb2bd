-- `$connect`: registers a connection for the sign-in that opened it, if the
-- sign-in and the user are within their limits, and — with a resume —
-- marks it as catching up on those wallets: one atomic step (the user's
-- keys share a slot), so concurrent connects cannot both take the last
-- place.
--
-- KEYS[1]  ws_conn:{<user>} (hash: connection id -> "<sid> <token exp>")
-- KEYS[2]  ws_conn:{<user>}:resume (hash: "<connection> <wallet>" ->
--          version)
-- ARGV[1]  the connection id (validated)   ARGV[2]  "<sid> <exp>"
-- ARGV[3]  the registry's TTL in ms         ARGV[4]  now, Unix seconds
-- ARGV[5]  the most connections per sign-in
-- ARGV[6]  the most connections per user
-- ARGV[7]  the resume marks' TTL in ms
-- ARGV[8..] "<connection> <wallet>", version pairs (the resume marks)
--
-- Entries whose token has expired receive nothing and are taken out on the
-- way (not counted). Returns 1 (registered), -1 (the sign-in already has
-- its most) or -2 (the user has).
local now = tonumber(ARGV[4])
local sid = string.match(ARGV[2], '^(%S+)')
local mine, all = 0, 0
local conns = redis.call('HGETALL', KEYS[1])
for i = 1, #conns, 2 do
  if conns[i] ~= ARGV[1] then
    local s, exp = string.match(conns[i + 1], '^(%S+) (%d+)$')
    if not s or tonumber(exp) <= now then
      redis.call('HDEL', KEYS[1], conns[i])
    else
      all = all + 1
      if s == sid then
        mine = mine + 1
      end
    end
  end
end
if mine >= tonumber(ARGV[5]) then
  return -1
end
if all >= tonumber(ARGV[6]) then
  return -2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if #ARGV >= 9 then
  for i = 8, #ARGV, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
return 1
