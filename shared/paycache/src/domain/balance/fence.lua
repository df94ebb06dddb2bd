-- Balance write-through, step 1 — before the database commit: fence the wallet.
--
-- KEYS[1]  balance value key   paycache:wallet_balance:{<wallet>}
-- KEYS[2]  its lease key       paycache:wallet_balance:{<wallet>}:lock
-- ARGV[1]  the version this write intends to create (expected_version + 1)
-- ARGV[2]  fence TTL in milliseconds
--
-- A fence is "w:<highest intended version>:<writers inside>". This script
-- deletes the cached balance, then raises the fence: a reader's lease is
-- replaced (its store will be refused), an existing fence keeps the higher
-- intended version, counts one more writer and lives at least ARGV[2] more.
-- No writer ever lowers or removes another writer's protection.
-- Until the fence is lifted, readers that miss read the database and store
-- nothing. Returns the fence.
redis.call('DEL', KEYS[1])
local intent = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local count = 1
local cur = redis.call('GET', KEYS[2])
if cur then
  local v, n = string.match(cur, '^w:(%d+):(%d+)$')
  if v then
    intent = math.max(intent, tonumber(v))
    count = tonumber(n) + 1
    ttl = math.max(ttl, redis.call('PTTL', KEYS[2]))
  end
end
local fence = 'w:' .. intent .. ':' .. count
redis.call('SET', KEYS[2], fence, 'PX', ttl)
return fence
