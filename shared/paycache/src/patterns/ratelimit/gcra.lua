-- GCRA (generic cell rate algorithm; a token bucket kept as one timestamp).
-- Each unit is due `T = window / limit` after the previous one (the
-- theoretical arrival time, TAT); a request may arrive up to `burst * T`
-- early. So: `limit` per window sustained, `burst` at once.
--
-- KEYS[1]  rate_limit:{<user>}:<endpoint>:gcra — the TAT, server microseconds
-- ARGV[1]  limit, ARGV[2] window in ms, ARGV[3] cost, ARGV[4] burst
--
-- Returns {allowed 0|1, remaining, reset_after_ms, retry_after_ms, the TAT
-- this admission set (server microseconds; 0 when denied): what a refund
-- needs to give back only what is left of this unit}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, window, cost, burst = tonumber(ARGV[1]), tonumber(ARGV[2]) * 1000, tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = window / limit
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  local remaining = math.floor((now - (tat - tolerance)) / interval)
  return {0, math.max(remaining, 0), math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000), 0}
end
-- Expires when the bucket would be full again: nothing to remember then.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - (new_tat - tolerance)) / interval)
return {1, math.max(remaining, 0), math.ceil((new_tat - now) / 1000), 0, new_tat}
