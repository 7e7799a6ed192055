-- throttle_release.lua: give back the attempt throttle_admit.lua counted,
-- after it succeeded (the right password or code): a success is not a
-- failure.
--
-- KEYS[1..]  counters (same hash tag) to give one attempt back to
-- ARGV[1]    now (ms)
-- ARGV[2]    '1': delete KEYS[1] instead (a success from this address wipes
--            this account's failures from it); '0': give back only
-- Returns    the number of counters changed

local now, changed = tonumber(ARGV[1]), 0
for i, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'n', 'e')
  local n, e = tonumber(v[1]), tonumber(v[2])
  if n ~= nil and e ~= nil and e > now and n > 0 then
    if i == 1 and ARGV[2] == '1' then
      redis.call('DEL', k)
    else
      redis.call('HINCRBY', k, 'n', -1)
    end
    changed = changed + 1
  end
end
return changed
