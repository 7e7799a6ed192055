-- count.lua: how many live sessions (current sids, not rotated-away ones)
-- one user has. Read-only.
--
-- KEYS[1] H  <prefix>{UID}, the user's sessions (see record.lua)
-- ARGV[1] now (ms)
-- Returns an integer.
local H = KEYS[1]
local now = tonumber(ARGV[1])
local n = 0
local all = redis.call('HVALS', H)
for _, rec in ipairs(all) do
  local r = parse(rec)
  if r ~= nil and r.exp > now and r.succ == '' then n = n + 1 end
end
return n
