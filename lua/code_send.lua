-- code_send.lua: stores a new one-time-code digest for a destination, if the
-- destination's send limits allow. Decides before any write.
--
-- KEYS[1]  code hash   <prefix>c:{TAG}:code  fields k (kid), h (digest), a (attempts left),
--                                             e (expiry ms; PEXPIRE only cleans up)
-- KEYS[2]  rate hash   <prefix>c:{TAG}:rate  fields l (last send ms), d (day window start ms), n (sends in window)
-- ARGV[1]  now (ms)
-- ARGV[2]  kid of the digest's subkey
-- ARGV[3]  digest (32 raw bytes)
-- ARGV[4]  code ttl (ms)
-- ARGV[5]  attempts a code survives
-- ARGV[6]  resend interval (ms)
-- ARGV[7]  daily limit (sends per day window)
-- ARGV[8]  day window length (ms)
-- Returns  {0}            stored (any earlier code of the destination replaced)
--          {1, wait_ms}   the previous send is too recent
--          {2, wait_ms}   the daily limit is reached; the window ends in wait_ms

local now = tonumber(ARGV[1])
local interval, limit, daylen = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local r = redis.call('HMGET', KEYS[2], 'l', 'd', 'n')
local last, day, count = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]) or 0

if last then
  local since = now - last
  if since < 0 then since = 0 end
  if since < interval then
    return {1, interval - since}
  end
end
if not day or now - day >= daylen then
  day = now
  count = 0
end
if count >= limit then
  return {2, day + daylen - now}
end

redis.call('HSET', KEYS[2], 'l', now, 'd', day, 'n', count + 1)
redis.call('PEXPIRE', KEYS[2], math.max(day + daylen, now + interval) - now)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'k', ARGV[2], 'h', ARGV[3], 'a', ARGV[5], 'e', now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {0}
