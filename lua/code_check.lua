-- code_check.lua: checks a one-time code against the stored digest, in
-- constant time; right consumes it, wrong spends an attempt, the last
-- attempt burns it.
--
-- KEYS[1]  code hash   <prefix>c:{TAG}:code  fields k (kid), h (digest), a (attempts left), e (expiry ms)
-- ARGV[1]  now (ms)
-- ARGV[2..] pairs: a kid, then the candidate code's digest under that kid's subkey
-- Returns  {0}                 no code (never sent, expired, used or burned)
--          {1}                 right: the code is deleted (it works once)
--          {2, attempts_left}  wrong; at 0 the code is deleted

local rec = redis.call('HMGET', KEYS[1], 'k', 'h', 'a', 'e')
local kid, stored, attempts, expires = rec[1], rec[2], tonumber(rec[3]), tonumber(rec[4])
if not kid or not stored or not attempts or not expires then
  return {0}
end
if expires <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return {0}
end

-- The candidate for the stored kid; another kid's (or none) is compared
-- as zeros, so the work is the same either way.
local candidate = string.rep('\0', #stored)
for i = 2, #ARGV - 1, 2 do
  if ARGV[i] == kid and #ARGV[i + 1] == #stored then
    candidate = ARGV[i + 1]
  end
end
local diff = 0
for i = 1, #stored do
  diff = bit.bor(diff, bit.bxor(string.byte(stored, i), string.byte(candidate, i)))
end

if diff == 0 then
  redis.call('DEL', KEYS[1])
  return {1}
end
attempts = attempts - 1
if attempts <= 0 then
  redis.call('DEL', KEYS[1])
  return {2, 0}
end
redis.call('HSET', KEYS[1], 'a', attempts)
return {2, attempts}
