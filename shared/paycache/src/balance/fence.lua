-- Balance write-through, step 1 — before the database commit: fence the wallet.
--
-- KEYS[1]  balance value key   paycache:wallet_balance:{<wallet>}
-- KEYS[2]  its lease key       paycache:wallet_balance:{<wallet>}:lock
-- ARGV[1]  the writer's token  "w:<intended version>:<random>"
-- ARGV[2]  fence TTL in milliseconds
--
-- Deletes the cached balance and puts the writer's token on the lease key,
-- replacing any reader's lease (whose store will then be refused). Until the
-- writer's apply step lifts it, or the TTL ends, readers that miss read the
-- database and store nothing. Returns 1.
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
