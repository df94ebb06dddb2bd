-- A request's read of its session, sliding the session's TTL — only if the
-- key holds a session: a tombstone ('ended') keeps its own TTL, as long as
-- a token naming the session could be valid (GETEX would cut it to the
-- session's idle timeout, after which every request with such a token
-- asks PostgreSQL again).
--
-- KEYS[1]  session:{<user>}:<sid>     ARGV[1]  the idle timeout, ms
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == '{' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return v
