-- list.lua: the user's live sessions, pruning dead ones first.
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- ARGV[1] now (ms)
-- Returns a flat list, least recently active first (lowest idle expiry), six
-- entries per session: { sid, idle_expiry, login (0 = not recorded: a plain
-- session), device, meta, bound (1 = bound to a device key, else 0), ... };
-- error TTBAD if Z holds another type.
local Z, R = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
upgrade(Z, R)
prune(Z, R, now)
local out = {}
for _, e in ipairs(heads(Z, R, now)) do
  local r = e[3] or { login = 0, device = '', meta = '', bound = '' }
  out[#out + 1] = e[1]
  out[#out + 1] = e[2]
  out[#out + 1] = r.login
  out[#out + 1] = r.device
  out[#out + 1] = r.meta
  if r.bound ~= '' then out[#out + 1] = 1 else out[#out + 1] = 0 end
end
return out
