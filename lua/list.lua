-- list.lua: the user's live sessions, pruning dead ones first.
--
-- KEYS[1] S  <prefix>{UID}:s   KEYS[2] H  <prefix>{UID}:h
-- ARGV[1] now (ms)
-- Returns a flat list, oldest login first, five entries per session:
--   { sid, idle_expiry, login, device, meta, ... }
local S, H = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
prune(S, H, now)
local out = {}
for _, e in ipairs(heads(S, H)) do
  local sid, r = e[1], e[2]
  out[#out + 1] = sid
  out[#out + 1] = tonumber(redis.call('ZSCORE', S, sid))
  out[#out + 1] = r.login
  out[#out + 1] = r.device
  out[#out + 1] = r.meta
end
return out
