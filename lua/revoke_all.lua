-- revoke_all.lua: revoke every session of a user.
--
-- KEYS[1] S  <prefix>{UID}:s   KEYS[2] H  <prefix>{UID}:h
-- ARGV: none
-- Returns the revoked sids: { sid, ... } (live and rotated-away ones).
local S, H = KEYS[1], KEYS[2]
local sids = redis.call('HKEYS', H)
redis.call('DEL', S, H)
return sids
