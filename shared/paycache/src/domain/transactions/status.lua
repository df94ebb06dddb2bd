-- A transaction's status changed: cache the new status, drop the cached
-- transaction (it embeds the old status) and announce it — one round trip.
--
-- KEYS[1]  txn_status value key   paycache:txn_status:{<txn>}
-- KEYS[2]  its lease key
-- KEYS[3]  txn value key          paycache:txn:{<txn>}
-- KEYS[4]  its lease key
-- ARGV[1]  encoded status (cache-aside envelope)
-- ARGV[2]  status TTL in milliseconds
-- ARGV[3]  channel, transactions:<txn>
-- ARGV[4]  message
--
-- Returns the number of subscribers that received the message.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return redis.call('PUBLISH', ARGV[3], ARGV[4])
