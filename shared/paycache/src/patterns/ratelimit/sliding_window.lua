-- Sliding-window counter (Cloudflare's approximation): two fixed-window
-- counters, the previous one weighted by how much of it the sliding window
-- still covers: estimate = prev * (window - elapsed) / window + cur.
--
-- KEYS[1]  rate_limit:{<user>}:<endpoint>:swc — hash {start, cur, prev}
-- ARGV[1]  limit, ARGV[2] window in ms, ARGV[3] cost
--
-- Returns {allowed 0|1, remaining, reset_after_ms, retry_after_ms, the
-- current window's start (server ms: what a refund must name to undo this
-- unit)}.
-- Memory is constant per key; the price is accuracy (see the Rust module).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now - (now % window)
local h = redis.call('HMGET', KEYS[1], 'start', 'cur', 'prev')
local s, cur, prev = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
if s == nil or s < start - window then
  cur, prev = 0, 0
elseif s == start - window then
  prev, cur = cur, 0
end
local elapsed = now - start
local estimate = prev * (window - elapsed) / window + cur
if estimate + cost > limit then
  -- With no new arrivals the estimate falls as the previous window slides
  -- out: find when prev's weighted share leaves room for `cost`.
  local retry = window - elapsed
  if prev > 0 and limit - cur - cost >= 0 then
    retry = math.ceil(window * (1 - (limit - cur - cost) / prev)) - elapsed
  end
  return {0, math.max(math.floor(limit - estimate), 0), window - elapsed, math.max(retry, 1), start}
end
cur = cur + cost
redis.call('HSET', KEYS[1], 'start', string.format('%.0f', start), 'cur', cur, 'prev', prev)
-- The counter is needed as `prev` through the next window.
redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', start + 2 * window))
return {1, math.max(math.floor(limit - estimate - cost), 0), window - elapsed, 0, start}
