-- Notes a session's activity sync in its Redis copy, keeping its TTL —
-- only if the key still holds a session: a sign-out may have replaced it
-- with a tombstone meanwhile, which must stay.
--
-- KEYS[1]  session:{<user>}:<sid>     ARGV[1]  the session (JSON)
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == '{' then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
