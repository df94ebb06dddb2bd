-- An announcement's shard is done: acknowledged and its progress dropped,
-- in one step — unless connections remain to retry.
--
-- KEYS[1]  the partition's stream, KEYS[2] the entry's progress,
-- KEYS[3]  its connections to retry
-- ARGV[1]  the consumer group, ARGV[2] the entry id
--
-- Returns 1 when acknowledged, 0 when connections remain to retry.
if redis.call('SCARD', KEYS[3]) > 0 then
  return 0
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
