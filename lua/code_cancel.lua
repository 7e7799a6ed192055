-- code_cancel.lua: withdraws a one-time code whose delivery failed and lifts
-- the resend wait; the send still counts against the daily limit.
--
-- KEYS[1]  code hash   <prefix>c:{TAG}:code  fields k, h (digest), a
-- KEYS[2]  rate hash   <prefix>c:{TAG}:rate  fields l (last send ms), d, n
-- ARGV[1]  digest of the code to withdraw (32 raw bytes)
-- Returns  1 if that code was still there and is now gone, else 0

if redis.call('HGET', KEYS[1], 'h') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HDEL', KEYS[2], 'l')
return 1
