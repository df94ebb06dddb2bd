-- Fixed window (the design's rate_limit:{user_id}:{endpoint}, a hash
-- {start, count, limit}): at most `limit` units per window aligned to the
-- server clock.
--
-- KEYS[1]  rate_limit:{<user>}:<endpoint>
-- ARGV[1]  limit, ARGV[2] window in ms, ARGV[3] cost
--
-- Returns {allowed 0|1, remaining, reset_after_ms, retry_after_ms, the
-- window's start (server ms: what a refund must name to undo this unit)}.
-- The key always gets an expiry (PEXPIREAT at the window's end) in the same
-- script that writes it, so there is no INCR-then-EXPIRE gap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now - (now % window)
local reset = start + window - now
local h = redis.call('HMGET', KEYS[1], 'start', 'count')
local count = 0
if tonumber(h[1]) == start then
  count = tonumber(h[2]) or 0
end
if count + cost > limit then
  return {0, math.max(limit - count, 0), reset, reset, start}
end
count = count + cost
redis.call('HSET', KEYS[1], 'start', string.format('%.0f', start), 'count', count, 'limit', limit)
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', start + window))
return {1, limit - count, reset, 0, start}
