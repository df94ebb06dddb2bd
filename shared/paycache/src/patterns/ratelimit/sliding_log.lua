-- Sliding log (the design's sliding:{user_id}:{endpoint} sorted set, score =
-- timestamp, member = request id): at most `limit` units in any window of
-- `window` ms, exactly.
--
-- KEYS[1]  sliding:{<user>}:<endpoint>
-- ARGV[1]  limit, ARGV[2] window in ms, ARGV[3] cost, ARGV[4] request id
--
-- Returns {allowed 0|1, remaining, reset_after_ms, retry_after_ms, 0} (a
-- refund names the units by the request id).
-- Scores are server microseconds; one member per unit of cost.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window_ms, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = window_ms * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
local function until_expiry(rank)
  local e = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
  if e[2] then
    return math.ceil((tonumber(e[2]) + window - now) / 1000)
  end
  return window_ms
end
if count + cost > limit then
  -- Admission needs the (count + cost - limit) oldest units to expire.
  return {0, math.max(limit - count, 0), until_expiry(0), until_expiry(count + cost - limit - 1), 0}
end
local args = {}
local stamp = string.format('%.0f', now)
for i = 1, cost do
  args[#args + 1] = stamp
  args[#args + 1] = ARGV[4] .. ':' .. i
end
redis.call('ZADD', KEYS[1], unpack(args))
redis.call('PEXPIRE', KEYS[1], window_ms)
return {1, limit - count - cost, until_expiry(0), 0, 0}
