-- revoke.lua: revoke one session (the sid given and every sid of its
-- rotation lineage).
--
-- KEYS[1] H  <prefix>{UID}, the user's sessions (see record.lua)
-- ARGV[1] sid (16 raw bytes)
-- Returns the revoked sids: { sid, ... } (empty if there was no such session).
local H = KEYS[1]
local sid = ARGV[1]
local r = get(H, sid)
if r == nil then
  redis.call('HDEL', H, sid)
  return {}
end
return remove_session(H, origin_of(sid, r))
