-- throttle_admit.lua: count one attempt against a failure counter, unless
-- the counter is at its limit (then count nothing). Counting before the
-- password is checked means a burst of concurrent attempts gets no more
-- checks than the limit.
--
-- A counter is a hash { n = attempts, e = window end (ms) }; a window starts
-- at the first attempt after the previous one ended. Windows are judged by
-- the caller's clock (ARGV[1]); PEXPIRE only cleans up.
--
-- KEYS[1]  the counter: <prefix>t:{a:BUCKET} (per address), <prefix>t:{s:BUCKET}
--          (code sends per address), or <prefix>t:{ACCOUNT}:BUCKET (one
--          account from one address)
-- KEYS[2]  optional, same hash tag: <prefix>t:{ACCOUNT}, the account's
--          attempts from every address, counted alongside KEYS[1]
-- ARGV[1]  now (ms)
-- ARGV[2]  window (ms)
-- ARGV[3]  limit of KEYS[1]
-- ARGV[4]  reduced limit of KEYS[1] while the account is under attack
-- ARGV[5]  account threshold: KEYS[2] at or above it = under attack
-- Returns  { allowed (1|0), retry_after_ms (0 when allowed), under_attack (1|0) }

local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])

local function live(k)
  local v = redis.call('HMGET', k, 'n', 'e')
  local n, e = tonumber(v[1]), tonumber(v[2])
  if n == nil or e == nil or e <= now then
    return 0, 0
  end
  return n, e
end

local function bump(k)
  local n, e = live(k)
  if n == 0 then
    redis.call('HSET', k, 'n', 1, 'e', now + window)
    redis.call('PEXPIRE', k, window)
  else
    redis.call('HINCRBY', k, 'n', 1)
  end
end

local limit, attack = tonumber(ARGV[3]), 0
if KEYS[2] then
  local total = live(KEYS[2])
  if total >= tonumber(ARGV[5]) then
    limit, attack = tonumber(ARGV[4]), 1
  end
end
local n, e = live(KEYS[1])
if n >= limit then
  return { 0, e - now, attack }
end
bump(KEYS[1])
if KEYS[2] then
  bump(KEYS[2])
end
return { 1, 0, attack }
