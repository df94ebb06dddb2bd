-- Balance write-through, step 2 — after the database decided: publish each
-- new version once and in order, move the cache only forwards, and lower or
-- lift the fence.
--
-- KEYS[1]  balance value key
-- KEYS[2]  its lease key; a fence is "w:<highest intended version>:<tokens
--          of the writers inside>" (fence.lua)
-- KEYS[3]  published-version key  paycache:wallet_balance:{<wallet>}:published
-- KEYS[4]  the wallet's message log (a stream; entry id <version>-1), which
--          real-time delivery reads in version order
-- KEYS[5]  the wallet's delivered cursor (real-time delivery): set here
--          when absent, so that delivery starts at the first version
--          published, whatever order the writers' queue entries arrive in
-- ARGV[1]  value TTL in milliseconds
-- ARGV[2]  channel, balance:<wallet>
-- ARGV[3]  the token of the writer leaving the fence, or "" for a sweep
-- ARGV[4]  the wallet's current version (what ARGV[5] holds)
-- ARGV[5]  the encoded current balance (cache-aside envelope), or "" for none
-- ARGV[6], ARGV[7], ...  pairs: version, message — ascending versions, the
--          outbox rows not yet applied
--
-- The fence is lifted when the current version reaches its intended
-- version (every writer inside has committed, or will fail its
-- compare-and-set), or when the last writer inside leaves. A writer leaves
-- only a fence that holds its token: one whose token is gone (the fence was
-- lifted, or expired, while it was away) changes nothing and stores nothing.
-- While a fence stands, the value is not written: a writer inside may still
-- commit a newer one.
--
-- The value is written only if it is newer than what is cached and not
-- older than the highest version published: a version that a writer has
-- acknowledged was published first, so a row read before that commit —
-- a writer that failed its compare-and-set, a writer frozen after its
-- commit until a newer write had applied, a sweep's read — never fills a
-- cache that an invalidation, an expiry or a later fence emptied. And a
-- writer stores only when it leaves the fence it was in: the last one out,
-- or the one whose version lifted it.
-- Returns {cached version afterwards, messages published, first and last
-- version published (0 when none)}.
local published = tonumber(redis.call('GET', KEYS[3]) or '0')
local sent = 0
local first = 0
local logged = nil
for i = 6, #ARGV, 2 do
  local v = tonumber(ARGV[i])
  if v > published then
    redis.call('PUBLISH', ARGV[2], ARGV[i + 1])
    -- Log entry ids only grow: never append at or below the log's tail
    -- (the published key may have expired before the log did).
    if logged == nil then
      logged = 0
      local tail = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
      if tail[1] then
        logged = tonumber(string.match(tail[1][1], '^(%d+)-')) or 0
      end
    end
    if v > logged then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, v .. '-1', 'm', ARGV[i + 1])
      logged = v
    end
    if first == 0 then
      first = v
    end
    published = v
    sent = sent + 1
  end
end
if sent > 0 then
  redis.call('SET', KEYS[3], published, 'PX', 86400000)
  redis.call('PEXPIRE', KEYS[4], 86400000)
  redis.call('SET', KEYS[5], first - 1, 'NX', 'PX', 86400000)
end

local version = tonumber(ARGV[4])
local leaving = ARGV[3]
local fenced = false
local member = false
local lease = redis.call('GET', KEYS[2])
if lease then
  local intent, tokens = string.match(lease, '^w:(%d+):([%w,]*)$')
  if intent then
    intent = tonumber(intent)
    local rest = {}
    for t in string.gmatch(tokens, '[^,]+') do
      if leaving ~= '' and t == leaving then
        member = true
      else
        rest[#rest + 1] = t
      end
    end
    if version >= intent or #rest == 0 then
      redis.call('DEL', KEYS[2])
    else
      fenced = true
      if member then
        redis.call('SET', KEYS[2], 'w:' .. intent .. ':' .. table.concat(rest, ','), 'KEEPTTL')
      end
    end
  end
end

local cached = 0
local cur = redis.call('GET', KEYS[1])
if cur then
  cached = tonumber(string.match(cur, '^1:[FN]:%d+:%d+:(%d+):')) or 0
end
local may_store = not fenced and (leaving == '' or member)
if may_store and ARGV[5] ~= '' and version > cached and version >= published then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[1])
  cached = version
end
if sent == 0 then
  published = 0
end
return {cached, sent, first, published}
