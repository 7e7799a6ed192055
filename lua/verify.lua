-- verify.lua: check a long token's session; slide its idle expiry inside the
-- renew window; rotate it when due. One call = one round trip; a plain
-- session costs one ZSCORE and one HGET of a missing field.
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV[1]  now (ms)
-- ARGV[2]  sid (16 raw bytes)
-- ARGV[3]  the token's issue time (ms)
-- ARGV[4]  idle ttl (ms)
-- ARGV[5]  renew window (ms)
-- ARGV[6]  rotate interval (ms)
-- ARGV[7]  rotate grace (ms)
-- ARGV[8]  candidate successor sid (16 raw bytes; used only if a rotation happens now)
-- ARGV[9]  absolute deadline of the session: login + absolute ttl (ms)
-- ARGV[10] the session's login time, from the token (ms)
-- ARGV[11] hex of the thumbprint of the device key the presenter proved
--          ('' = none: an unbound long token)
-- Returns {code, idle_expiry, successor, revoked sid, ...}:
--   { 1, exp, '' }        valid
--   { 2, exp, succ }      valid; present the successor from now on (exp is the successor's)
--   { 0, 0, '' }          no such session (never existed, revoked, or pruned)
--   {-1, 0, '' }          expired (idle or absolute); the sid is removed
--   {-2, 0, '', sids...}  rotated-away sid presented after its grace: theft,
--                          the whole session is revoked (sids listed)
--   {-3, 0, '' }          the sid's record is malformed (nothing changed)
--   {-4, 0, '' }          the session's device binding is not ARGV[11]: a
--                          bound session without its key's proof (nothing changed)
--   error TTBAD           Z holds another type (nothing changed)
local Z, R = KEYS[1], KEYS[2]
local now, sid, iat = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local idle, renew, rot, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cand, deadline, login = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local device = ARGV[11] or ''

local ok, s = pcall(redis.call, 'ZSCORE', Z, sid)
if not ok then
  -- Not a sorted set: a v2 hash is converted, anything else refused.
  upgrade(Z, R)
  s = redis.call('ZSCORE', Z, sid)
end
local r = record_of(R, sid)
if r == false then return { -3, 0, '' } end

local function theft()
  local out = { -2, 0, '' }
  for _, x in ipairs(remove_session(Z, R, origin_of(sid, r))) do out[#out + 1] = x end
  return out
end

if r ~= nil and r.succ ~= '' and r.grace > 0 and now > r.grace then return theft() end
if not s then return { 0, 0, '' } end
local exp = tonumber(s)
if exp <= now or now >= deadline then
  redis.call('ZREM', Z, sid)
  -- A rotated-away sid keeps its record as a theft tombstone.
  if r ~= nil and r.succ == '' then redis.call('HDEL', R, sid) end
  return { -1, 0, '' }
end

-- No downgrade: a bound session answers only to its key's proof.
if (r ~= nil and r.bound or '') ~= device then return { -4, 0, '' } end

local cap = function(t) if t > deadline then return deadline end return t end

-- A rotated sid: hand out the same successor until it is first used, then
-- accept in-flight requests until the grace ends.
if r ~= nil and r.succ ~= '' then
  local succ = unhex(r.succ)
  local sexp = score(Z, succ)
  if sexp == nil then return { -1, 0, '' } end
  if r.grace == 0 then return { 2, sexp, succ } end
  return { 1, exp, '' }
end

-- First use of a successor starts its predecessor's grace period.
if r ~= nil and r.pred ~= '' then
  local p = unhex(r.pred)
  local pr = parse(redis.call('HGET', R, p))
  if pr ~= nil and pr.grace == 0 then
    pr.grace = now + grace
    put(R, p, pr)
    local pexp = score(Z, p)
    if pexp ~= nil and pexp > pr.grace then redis.call('ZADD', Z, 'XX', pr.grace, p) end
  end
  r.pred = ''
  put(R, sid, r)
end

-- Rotation due (and the candidate free): issue the successor.
if now - iat >= rot and not score(Z, cand) and redis.call('HEXISTS', R, cand) == 0 then
  local me = r or { login = login, device = '', origin = '', pred = '', succ = '', grace = 0, meta = '' }
  local nexp = cap(now + idle)
  redis.call('ZADD', Z, nexp, cand)
  put(R, cand, { login = me.login, device = me.device, origin = origin_of(sid, r), pred = hex(sid),
                 succ = '', grace = 0, meta = me.meta, bound = me.bound })
  me.succ = hex(cand)
  put(R, sid, me)
  trim_lineage(Z, R, origin_of(sid, r))
  extend_ttl(Z, R, nexp - now)
  return { 2, nexp, cand }
end

-- Renewal inside the window.
if exp - now <= renew then
  local nexp = cap(now + idle)
  if nexp > exp then
    exp = nexp
    redis.call('ZADD', Z, 'XX', exp, sid)
    extend_ttl(Z, R, exp - now)
  end
end
return { 1, exp, '' }
