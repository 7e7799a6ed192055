-- revoke.lua: revoke one session (the sid given and every sid of its
-- rotation lineage).
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV[1] sid (16 raw bytes)
-- Returns the revoked sids: { sid, ... } (empty if there was no such session);
--         error TTBAD if Z holds another type (nothing changed).
local Z, R = KEYS[1], KEYS[2]
local sid = ARGV[1]
upgrade(Z, R)
local raw = redis.call('HGET', R, sid)
local r = parse(raw)
if not score(Z, sid) and not raw then
  return {}
end
return remove_session(Z, R, origin_of(sid, r))
