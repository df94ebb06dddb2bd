-- Fraud signals: read the user's cached risk score (the design's
-- risk_score:{user_id}) and, when it is at or above the threshold, publish
-- one fraud alert per score (not one per request).
--
-- KEYS[1]  risk score key          paycache:risk_score:{<user>}
-- KEYS[2]  alert marker (same tag) paycache:risk_score:{<user>}:alerted
-- ARGV[1]  threshold, ARGV[2] channel (fraud:<user>), ARGV[3] user id,
-- ARGV[4]  timestamp (Unix seconds, fractional)
--
-- Returns the stored JSON (false when there is none).
local cur = redis.call('GET', KEYS[1])
if not cur then
  return false
end
local doc = cjson.decode(cur)
local score = tonumber(doc.score)
if score and score >= tonumber(ARGV[1]) then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 1 then ttl = 300000 end
  -- The marker names the score it alerted for: a new score alerts again.
  local marker = tostring(score) .. '|' .. tostring(doc.last_updated)
  if redis.call('GET', KEYS[2]) ~= marker then
    redis.call('SET', KEYS[2], marker, 'PX', ttl)
    redis.call('PUBLISH', ARGV[2], cjson.encode({
      type = 'risk_alert', user_id = ARGV[3], score = score,
      factors = doc.factors, timestamp = tonumber(ARGV[4])
    }))
  end
end
return cur
