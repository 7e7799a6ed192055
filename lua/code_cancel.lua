-- code_cancel.lua: withdraws a one-time code whose delivery failed and lifts
-- the resend wait; the send still counts against the daily limit. A code
-- past its expiry is gone already: nothing to withdraw.
--
-- KEYS[1]  code hash   <prefix>c:{TAG}:code  fields k, h (digest), a, e (expiry ms)
-- KEYS[2]  rate hash   <prefix>c:{TAG}:rate  fields l (last send ms), d, n
-- ARGV[1]  digest of the code to withdraw (32 raw bytes)
-- ARGV[2]  now (ms)
-- Returns  1 if that code was still there and is now gone, else 0

local rec = redis.call('HMGET', KEYS[1], 'h', 'e')
local expires = tonumber(rec[2])
if expires and expires <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 0
end
if rec[1] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'l')
return 1
