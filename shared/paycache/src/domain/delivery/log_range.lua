-- A reconnecting client's catch-up on one wallet: what the wallet's log
-- still holds after the version the client saw.
--
-- KEYS[1]  the wallet's log (stream, entry ids <version>-1)
-- KEYS[2]  the wallet's published version
-- ARGV[1]  the version the client saw
-- ARGV[2]  how many entries at most
--
-- Returns {oldest version the log holds (0: none), the published version
-- (0: unknown), entries after ARGV[1]}.
local oldest = 0
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then
  oldest = tonumber(string.match(first[1][1], '^(%d+)-')) or 0
end
local published = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {oldest, published,
  redis.call('XRANGE', KEYS[1], '(' .. ARGV[1] .. '-1', '+', 'COUNT', ARGV[2])}
