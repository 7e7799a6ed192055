-- count.lua: how many live sessions (current sids, not rotated-away ones)
-- one user has. Writes only to convert a v2 key (see record.lua).
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV[1] now (ms)
-- Returns an integer.
local Z, R = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
upgrade(Z, R)
local n = redis.call('ZCOUNT', Z, '(' .. now, '+inf')
if redis.call('EXISTS', R) == 1 then
  -- Rotated-away sids still in their grace are live but not sessions.
  for sid, r in pairs(records(R)) do
    if r ~= false and r.succ ~= '' then
      local s = score(Z, sid)
      if s ~= nil and s > now then n = n - 1 end
    end
  end
end
return n
