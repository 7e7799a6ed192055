-- revoke_all.lua: revoke every session of a user.
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV: none
-- Returns the revoked sids: { sid, ... } (live and rotated-away ones);
--         error TTBAD if Z holds another type (nothing changed).
local Z, R = KEYS[1], KEYS[2]
upgrade(Z, R)
local out, seen = {}, {}
for _, sid in ipairs(redis.call('ZRANGE', Z, 0, -1)) do
  seen[sid] = true
  out[#out + 1] = sid
end
for _, sid in ipairs(redis.call('HKEYS', R)) do
  if not seen[sid] then out[#out + 1] = sid end
end
redis.call('DEL', Z, R)
return out
