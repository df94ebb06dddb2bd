-- Fraud signals: record that a device was seen (the design's
-- device:{device_fingerprint}, 24 h).
--
-- KEYS[1]  device key   paycache:device:{<fingerprint>}
-- ARGV[1]  user id, ARGV[2] now (RFC 3339), ARGV[3] TTL in ms
--
-- Returns {1 if the device is new for this user (never seen, or last seen
-- with another user), the stored JSON}. First seen is kept; last seen and
-- the TTL move forward.
local cur = redis.call('GET', KEYS[1])
local new = 1
local doc
if cur then
  doc = cjson.decode(cur)
  if doc.user_id == ARGV[1] then
    new = 0
  else
    doc = nil
  end
end
if not doc then
  doc = {user_id = ARGV[1], first_seen = ARGV[2], trusted = false, location = cjson.null}
end
doc.last_seen = ARGV[2]
local out = cjson.encode(doc)
redis.call('SET', KEYS[1], out, 'PX', ARGV[3])
return {new, out}
