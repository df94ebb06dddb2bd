-- A sender's hold on one delivery partition.
--
-- KEYS[1]  ws_lease:{d<p>}
-- ARGV[1]  the sender (consumer name)
-- ARGV[2]  lease, milliseconds
-- ARGV[3]  "take" (only if free), "renew" (only if held by ARGV[1]) or
--          "release" (only if held by ARGV[1])
--
-- Returns 1 when the sender holds the partition afterwards (take, renew)
-- or let it go (release); 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'take' then
  if holder and holder ~= ARGV[1] then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder ~= ARGV[1] then
  return 0
end
if ARGV[3] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
