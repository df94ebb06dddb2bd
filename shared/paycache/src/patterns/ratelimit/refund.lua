-- Gives back what an admitted check consumed, when the request it admitted
-- was then refused as unauthenticated (a refusal costs its subject
-- nothing). Off the success path: only refused requests send it.
--
-- KEYS[1]  the key the check used
-- ARGV[1]  algorithm, ARGV[2] window in ms, ARGV[3] cost, ARGV[4] the
--          check's request id (sliding_log), ARGV[5] limit (gcra),
--          ARGV[6] where the check charged: its window's start (server
--          ms; fixed_window, sliding_window), the TAT it set (server µs;
--          gcra)
--
-- Each algorithm undoes exactly its own record, in the window it was
-- charged in and never a later one: a refund that arrives after the
-- window rolled over gives back nothing of the new window's (the unit
-- charged before the boundary is then gone, or counted only as the
-- sliding window's previous window, where it is undone). Returns 1 when
-- something was given back.
local t = redis.call('TIME')
local algorithm, window, cost = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if algorithm == 'fixed_window' then
  local charged = tonumber(ARGV[6])
  local h = redis.call('HMGET', KEYS[1], 'start', 'count')
  if tonumber(h[1]) ~= charged or tonumber(h[2]) == nil then
    return 0
  end
  redis.call('HSET', KEYS[1], 'count', math.max(tonumber(h[2]) - cost, 0))
  return 1
elseif algorithm == 'sliding_log' then
  local members = {}
  for i = 1, cost do
    members[#members + 1] = ARGV[4] .. ':' .. i
  end
  return math.min(redis.call('ZREM', KEYS[1], unpack(members)), 1)
elseif algorithm == 'sliding_window' then
  local charged = tonumber(ARGV[6])
  local h = redis.call('HMGET', KEYS[1], 'start', 'cur', 'prev')
  local s = tonumber(h[1])
  -- The unit is in `cur` while the hash's window is the one it was
  -- charged in (whatever the clock says: the next check rolls it), in
  -- `prev` once a check in the next window rolled it, gone after that.
  if s == charged then
    redis.call('HSET', KEYS[1], 'cur', math.max((tonumber(h[2]) or 0) - cost, 0))
    return 1
  elseif s == charged + window then
    redis.call('HSET', KEYS[1], 'prev', math.max((tonumber(h[3]) or 0) - cost, 0))
    return 1
  end
  return 0
elseif algorithm == 'gcra' then
  -- The admission moved the TAT to ARGV[6]; what is left of it drains as
  -- time passes (all of it once the clock passes ARGV[6]). Only that is
  -- given back: a unit admitted later is never undone.
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local interval = window * 1000 / tonumber(ARGV[5])
  local left = math.min(interval * cost, tonumber(ARGV[6]) - now)
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if left <= 0 or tat <= now then
    return 0
  end
  local new_tat = math.max(tat - left, now)
  if new_tat <= now then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  end
  return 1
end
return 0
