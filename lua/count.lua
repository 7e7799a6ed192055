-- count.lua: how many live sessions (current sids, not rotated-away ones)
-- one user has. Read-only.
--
-- KEYS[1] S  <prefix>{UID}:s   KEYS[2] H  <prefix>{UID}:h
-- ARGV[1] now (ms)
-- Returns an integer.
local S, H = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local n = 0
local members = redis.call('ZRANGEBYSCORE', S, '(' .. now, '+inf')
for _, sid in ipairs(members) do
  local rec = redis.call('HGET', H, sid)
  -- The succ field is the fifth; a current sid has it empty.
  if rec and string.match(rec, '^[^|]*|[^|]*|[^|]*|[^|]*||') then n = n + 1 end
end
return n
