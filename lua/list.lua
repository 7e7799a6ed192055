-- list.lua: the user's live sessions, pruning dead ones first.
--
-- KEYS[1] H  <prefix>{UID}, the user's sessions (see record.lua)
-- ARGV[1] now (ms)
-- Returns a flat list, oldest login first, five entries per session:
--   { sid, idle_expiry, login, device, meta, ... }
local H = KEYS[1]
local now = tonumber(ARGV[1])
prune(H, now)
local out = {}
for _, e in ipairs(heads(H, now)) do
  local sid, r = e[1], e[2]
  out[#out + 1] = sid
  out[#out + 1] = r.exp
  out[#out + 1] = r.login
  out[#out + 1] = r.device
  out[#out + 1] = r.meta
end
return out
