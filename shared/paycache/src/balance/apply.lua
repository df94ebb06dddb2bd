-- Balance write-through, step 2 — after the database commit: update the
-- cache only forwards, publish each version once and in order, lift the fence.
--
-- KEYS[1]  balance value key
-- KEYS[2]  its lease key (a writer fence is "w:<intended version>:<random>")
-- KEYS[3]  published-version key  paycache:wallet_balance:{<wallet>}:published
-- ARGV[1]  value TTL in milliseconds
-- ARGV[2]  channel, balance:<wallet>
-- ARGV[3]  the writer's fence token, or "" for a sweep
-- ARGV[4]  version of the value to cache (the wallet's current version)
-- ARGV[5]  the encoded value (cache-aside envelope, version in its header)
-- ARGV[6], ARGV[7], ...  pairs: version, message — ascending versions, the
--          outbox rows not yet applied
--
-- Returns {cached version afterwards, messages published}.
-- The value is written only if it is newer than what is cached, and never
-- while a writer that intends a newer version has its fence up. A fence
-- whose intended version is at most the one cached here is lifted: that
-- writer has committed it, or will fail its compare-and-set.
local published = tonumber(redis.call('GET', KEYS[3]) or '0')
local sent = 0
for i = 6, #ARGV, 2 do
  local v = tonumber(ARGV[i])
  if v > published then
    redis.call('PUBLISH', ARGV[2], ARGV[i + 1])
    published = v
    sent = sent + 1
  end
end
redis.call('SET', KEYS[3], published, 'PX', 86400000)

local cached = 0
local cur = redis.call('GET', KEYS[1])
if cur then
  cached = tonumber(string.match(cur, '^1:[FN]:%d+:%d+:(%d+):')) or 0
end
local version = tonumber(ARGV[4])
local lease = redis.call('GET', KEYS[2])
local fence_version = lease and tonumber(string.match(lease, '^w:(%d+):'))
local ours = ARGV[3] ~= '' and lease == ARGV[3]
local newer_writer = fence_version and fence_version > version and not ours
if version > cached and not newer_writer then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[1])
  cached = version
end
if ours or (fence_version and fence_version <= version) then
  redis.call('DEL', KEYS[2])
end
return {cached, sent}
