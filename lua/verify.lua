-- verify.lua: check a long token's session; slide its idle expiry inside the
-- renew window; rotate it when due. One call = one round trip.
--
-- KEYS[1] S  <prefix>{UID}:s   KEYS[2] H  <prefix>{UID}:h
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
local S, H = KEYS[1], KEYS[2]
local now, sid, iat = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local idle, renew, rot, grace = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cand, deadline = ARGV[8], tonumber(ARGV[9])

local function theft(r)
  local out = { -2, 0, '' }
  for _, s in ipairs(remove_session(S, H, origin_of(sid, r))) do out[#out + 1] = s end
  return out
end

local score = redis.call('ZSCORE', S, sid)
local raw = redis.call('HGET', H, sid)
local r = parse(raw)
if not score then
  if r ~= nil and r.succ ~= '' and r.grace > 0 and now > r.grace then return theft(r) end
  return { 0, 0, '' }
end
if r == nil then return { -3, 0, '' } end
score = tonumber(score)
if r.succ ~= '' and r.grace > 0 and now > r.grace then return theft(r) end
if score <= now or now >= deadline then
  redis.call('ZREM', S, sid)
  if r.succ == '' then redis.call('HDEL', H, sid) end
  return { -1, 0, '' }
end

local cap = function(t) if t > deadline then return deadline end return t end

-- A rotated sid: hand out the same successor until it is first used, then
-- accept in-flight requests until the grace ends.
if r.succ ~= '' then
  local succ = unhex(r.succ)
  local sexp = redis.call('ZSCORE', S, succ)
  if not sexp then
    return { -1, 0, '' }
  end
  if r.grace == 0 then return { 2, tonumber(sexp), succ } end
  return { 1, score, '' }
end

-- First use of a successor starts its predecessor's grace period.
if r.pred ~= '' then
  local p = unhex(r.pred)
  local pr = parse(redis.call('HGET', H, p))
  if pr ~= nil and pr.grace == 0 then
    pr.grace = now + grace
    redis.call('HSET', H, p, fmt(pr))
    local pscore = redis.call('ZSCORE', S, p)
    if pscore and tonumber(pscore) > pr.grace then redis.call('ZADD', S, 'XX', pr.grace, p) end
  end
  r.pred = ''
  redis.call('HSET', H, sid, fmt(r))
end

-- Rotation due: issue the successor.
if now - iat >= rot then
  local exp = cap(now + idle)
  redis.call('ZADD', S, exp, cand)
  redis.call('HSET', H, cand, fmt({ login = r.login, device = r.device, origin = origin_of(sid, r), pred = hex(sid),
                                    succ = '', grace = 0, meta = r.meta }))
  r.succ = hex(cand)
  redis.call('HSET', H, sid, fmt(r))
  extend_ttl(S, exp - now)
  extend_ttl(H, exp - now)
  return { 2, exp, cand }
end

-- Renewal inside the window.
if score - now <= renew then
  local exp = cap(now + idle)
  if exp > score then
    redis.call('ZADD', S, 'XX', exp, sid)
    extend_ttl(S, exp - now)
    extend_ttl(H, exp - now)
    score = exp
  end
end
return { 1, score, '' }
