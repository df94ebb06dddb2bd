-- A sign-in: the session, and its id in the user's session index, in one
-- atomic step (both carry the user's hash tag).
--
-- KEYS[1]  session:{<user>}:<sid>     KEYS[2]  user_sessions:{<user>}
-- ARGV[1]  the session (JSON)         ARGV[2]  its idle TTL in ms
-- ARGV[3]  sid (validated)            ARGV[4]  the index's TTL in ms
-- ARGV[5]  session:{<user>}: (what precedes a sid in a session key)
-- ARGV[6]  'nx' to put back a session reloaded from PostgreSQL: only if
--          the key is empty (a sign-out's tombstone written meanwhile
--          stays)
--
-- The index is pruned on the way: up to 16 of its ids whose session has
-- ended (idled out, or signed out: a tombstone) are removed, so it stays
-- about as large as the user's live sessions.
if ARGV[6] == 'nx' then
  if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
    return 0
  end
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[3])
for _, sid in ipairs(redis.call('SRANDMEMBER', KEYS[2], 16)) do
  local v = redis.call('GET', ARGV[5] .. sid)
  if not v or v == 'ended' then
    redis.call('SREM', KEYS[2], sid)
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
