-- verify.lua: check a long token's session; slide its idle expiry inside the
-- renew window; rotate it when due. One call = one round trip.
--
-- KEYS[1] H  <prefix>{UID}, the user's sessions (see record.lua)
-- ARGV[1] now (ms)
-- ARGV[2] sid (16 raw bytes)
-- ARGV[3] the token's issue time (ms)
-- ARGV[4] idle ttl (ms)
-- ARGV[5] renew window (ms)
-- ARGV[6] rotate interval (ms)
-- ARGV[7] rotate grace (ms)
-- ARGV[8] candidate successor sid (16 raw bytes; used only if a rotation happens now)
-- ARGV[9] absolute deadline of the session: login + absolute ttl (ms)
-- Returns {code, idle_expiry, successor, revoked sid, ...}:
--   { 1, exp, '' }        valid
--   { 2, exp, succ }      valid; present the successor from now on (exp is the successor's)
--   { 0, 0, '' }          no such session (never existed, revoked, or pruned)
--   {-1, 0, '' }          expired (idle or absolute); the sid is removed
--   {-2, 0, '', sids...}  rotated-away sid presented after its grace: theft,
--                          the whole session is revoked (sids listed)
--   {-3, 0, '' }          the sid's record is missing or malformed
local H = KEYS[1]
local now, sid, iat = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local idle, renew, rot, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cand, deadline = ARGV[8], tonumber(ARGV[9])

local function theft(r)
  local out = { -2, 0, '' }
  for _, s in ipairs(remove_session(H, origin_of(sid, r))) do out[#out + 1] = s end
  return out
end

local raw = redis.call('HGET', H, sid)
if not raw then return { 0, 0, '' } end
local r = parse(raw)
if r == nil then return { -3, 0, '' } end
if r.succ ~= '' and r.grace > 0 and now > r.grace then return theft(r) end
if r.exp == 0 then return { 0, 0, '' } end
if r.exp <= now or now >= deadline then
  if r.succ == '' then
    redis.call('HDEL', H, sid)
  else
    r.exp = 0
    put(H, sid, r)
  end
  return { -1, 0, '' }
end

local cap = function(t) if t > deadline then return deadline end return t end

-- A rotated sid: hand out the same successor until it is first used, then
-- accept in-flight requests until the grace ends.
if r.succ ~= '' then
  local succ = unhex(r.succ)
  local sr = get(H, succ)
  if sr == nil or sr.exp == 0 then
    return { -1, 0, '' }
  end
  if r.grace == 0 then return { 2, sr.exp, succ } end
  return { 1, r.exp, '' }
end

-- First use of a successor starts its predecessor's grace period.
if r.pred ~= '' then
  local p = unhex(r.pred)
  local pr = get(H, p)
  if pr ~= nil and pr.grace == 0 then
    pr.grace = now + grace
    if pr.exp > pr.grace then pr.exp = pr.grace end
    put(H, p, pr)
  end
  r.pred = ''
  put(H, sid, r)
end

-- Rotation due: issue the successor.
if now - iat >= rot then
  local exp = cap(now + idle)
  put(H, cand, { exp = exp, login = r.login, device = r.device, origin = origin_of(sid, r), pred = hex(sid),
                 succ = '', grace = 0, meta = r.meta })
  r.succ = hex(cand)
  put(H, sid, r)
  trim_lineage(H, origin_of(sid, r))
  extend_ttl(H, exp - now)
  return { 2, exp, cand }
end

-- Renewal inside the window.
if r.exp - now <= renew then
  local exp = cap(now + idle)
  if exp > r.exp then
    r.exp = exp
    put(H, sid, r)
    extend_ttl(H, exp - now)
  end
end
return { 1, r.exp, '' }
