-- revoke.lua: revoke one session (the sid given and every sid of its
-- rotation lineage).
--
-- KEYS[1] S  <prefix>{UID}:s   KEYS[2] H  <prefix>{UID}:h
-- ARGV[1] sid (16 raw bytes)
-- Returns the revoked sids: { sid, ... } (empty if there was no such session).
local S, H = KEYS[1], KEYS[2]
local sid = ARGV[1]
local r = parse(redis.call('HGET', H, sid))
if r == nil then
  redis.call('ZREM', S, sid)
  redis.call('HDEL', H, sid)
  return {}
end
return remove_session(S, H, origin_of(sid, r))
