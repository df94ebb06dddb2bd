-- One read of a wallet's log: its entries after a version — the one given
-- (a reconnect's catch-up), or the wallet's delivered cursor (a balance
-- kick) — with what the log still holds and the version published last.
--
-- KEYS[1]  the wallet's log (stream, entry ids <version>-1)
-- KEYS[2]  the wallet's published version
-- KEYS[3]  the wallet's delivered cursor
-- ARGV[1]  the version to read after; "" for the delivered cursor
-- ARGV[2]  how many entries at most
-- ARGV[3]  where to start when ARGV[1] is "" and there is no cursor
--
-- Returns {oldest version the log holds (0: none), the published version
-- (0: unknown), entries after the version}.
local after = ARGV[1]
if after == '' then
  after = redis.call('GET', KEYS[3]) or ARGV[3]
end
local oldest = 0
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if first[1] then
  oldest = tonumber(string.match(first[1][1], '^(%d+)-')) or 0
end
local published = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
return {oldest, published,
  redis.call('XRANGE', KEYS[1], '(' .. after .. '-1', '+', 'COUNT', ARGV[2])}
