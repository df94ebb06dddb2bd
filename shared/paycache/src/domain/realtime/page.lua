-- One page of a registry shard, in connection-id order: an exact cursor
-- (unlike HSCAN, which may return an entry twice while the hash rehashes),
-- so an announcement resumed at a checkpoint repeats nobody.
--
-- KEYS[1]  ws_all:{a<s>}      (hash: connection id -> "<user> <sid> <exp>")
-- KEYS[2]  ws_all:{a<s>}:ids  (sorted set, every score 0: the ids)
-- ARGV[1]  the last id of the previous page ("" for the first page)
-- ARGV[2]  how many
--
-- Returns {id, entry, id, entry, ...}; an id whose entry is gone comes
-- with "" (to be forgotten). Fewer than ARGV[2] ids: the shard's end.
local from = '-'
if ARGV[1] ~= '' then
  from = '(' .. ARGV[1]
end
local ids = redis.call('ZRANGE', KEYS[2], from, '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
if #ids == 0 then
  return out
end
local values = redis.call('HMGET', KEYS[1], unpack(ids))
for i = 1, #ids do
  out[#out + 1] = ids[i]
  out[#out + 1] = values[i] or ''
end
return out
