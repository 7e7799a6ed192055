-- revoke_all.lua: revoke every session of a user.
--
-- KEYS[1] H  <prefix>{UID}, the user's sessions (see record.lua)
-- ARGV: none
-- Returns the revoked sids: { sid, ... } (live and rotated-away ones).
local H = KEYS[1]
local sids = redis.call('HKEYS', H)
redis.call('DEL', H)
return sids
