-- bind.lua: bind a session to a device key (device-bound sessions): the
-- session continues under a new sid whose record holds the key's
-- thumbprint; the old sid and its whole rotation lineage are removed, so an
-- unbound long token of the session (copied before the binding) names a sid
-- that no longer exists, and the caller broadcasts them as revoked.
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV[1] now (ms)
-- ARGV[2] sid the registering long token names (16 raw bytes)
-- ARGV[3] the new sid (16 raw bytes, random)
-- ARGV[4] hex of the device key's SHA-256 thumbprint (64 characters)
-- ARGV[5] idle ttl (ms)
-- ARGV[6] absolute deadline of the session: login + absolute ttl (ms)
-- ARGV[7] the session's login time, from the token (ms)
-- Returns:
--   { 1, idle_expiry, removed sid, ... }  bound; the new sid's idle expiry,
--                                         and the sids that ended
--   { 0 }   no such session, or the sid was rotated away (present the
--           current token)
--   {-1 }   expired (idle or absolute)
--   {-3 }   the sid's record is malformed
--   {-4 }   the session is already bound to a device key
--   {-5 }   the new sid is taken (nothing changed)
--   error TTBAD if Z holds another type (nothing changed)
local Z, R = KEYS[1], KEYS[2]
local now, sid, new, key = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local idle, deadline, login = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

upgrade(Z, R)
local r = record_of(R, sid)
if r == false then return { -3 } end
local s = score(Z, sid)
if not s then return { 0 } end
if s <= now or now >= deadline then return { -1 } end
if r ~= nil and r.succ ~= '' then return { 0 } end
if r ~= nil and r.bound ~= '' then return { -4 } end
if score(Z, new) or redis.call('HEXISTS', R, new) == 1 then return { -5 } end

local me = r or { login = login, device = '', meta = '' }
local removed = remove_session(Z, R, origin_of(sid, r))
local exp = now + idle
if exp > deadline then exp = deadline end
redis.call('ZADD', Z, exp, new)
put(R, new, { login = me.login, device = me.device, origin = '', pred = '', succ = '', grace = 0,
              meta = me.meta, bound = key })
extend_ttl(Z, R, exp - now)
local out = { 1, exp }
for _, x in ipairs(removed) do out[#out + 1] = x end
return out
