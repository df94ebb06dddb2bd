-- Balance write-through, step 1 — before the database commit: fence the wallet.
--
-- KEYS[1]  balance value key   paycache:wallet_balance:{<wallet>}
-- KEYS[2]  its lease key       paycache:wallet_balance:{<wallet>}:lock
-- ARGV[1]  the version this write intends to create (expected_version + 1)
-- ARGV[2]  fence TTL in milliseconds
-- ARGV[3]  this writer's token ("t" and hex digits, unique per write)
--
-- A fence is "w:<highest intended version>:<tokens of the writers inside>",
-- the tokens comma-separated. This script deletes the cached balance, then
-- raises the fence: a reader's lease is replaced (its store will be
-- refused), an existing fence keeps the higher intended version, adds this
-- writer's token and lives at least ARGV[2] more. No writer ever lowers or
-- removes another writer's protection: a writer leaves (apply.lua) only a
-- fence that holds its own token — a count would let a writer left over from
-- a lifted fence take a later writer's place in the next one.
-- Until the fence is lifted, readers that miss read the database and store
-- nothing. Returns the fence.
redis.call('DEL', KEYS[1])
local intent = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local inside = ARGV[3]
local cur = redis.call('GET', KEYS[2])
if cur then
  local v, tokens = string.match(cur, '^w:(%d+):([%w,]*)$')
  if v then
    intent = math.max(intent, tonumber(v))
    if tokens ~= '' then
      inside = tokens .. ',' .. ARGV[3]
    end
    ttl = math.max(ttl, redis.call('PTTL', KEYS[2]))
  end
end
local fence = 'w:' .. intent .. ':' .. inside
redis.call('SET', KEYS[2], fence, 'PX', ttl)
return fence
