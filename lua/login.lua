-- login.lua: create a session, applying the login mode and caps.
--
-- KEYS[1] Z  <prefix>{UID}, the user's sorted set of sids (see record.lua)
-- KEYS[2] R  <prefix>{UID}:r, the sids' companion records
-- KEYS[3] B  <prefix>{UID}:ban, the user's ban (hash u = end ms, r = reason)
-- ARGV[1]  now (ms)
-- ARGV[2]  sid (16 raw bytes)
-- ARGV[3]  login time (ms)
-- ARGV[4]  idle expiry of the new session (ms; already capped by the absolute lifetime)
-- ARGV[5]  device type ('' = none; validated by the caller: [a-z0-9_-]{1,16})
-- ARGV[6]  mode: 'm' multi | 's' single
-- ARGV[7]  max sessions (multi mode)
-- ARGV[8]  cap for this device type (0 = no cap)
-- ARGV[9]  overflow: 'e' evict the least recently active | 'r' reject
-- ARGV[10] metadata ('' = none)
-- Returns {1, evicted sid, ...} on success,
--         {0, 'max'} or {0, 'device'} when overflow = reject refused it (nothing changed),
--         {-1, 'exists'} if the sid is taken (nothing changed),
--         {-2, until} while the user is banned (nothing changed);
--         error TTBAD if Z holds another type (nothing changed).
local Z, R = KEYS[1], KEYS[2]
local now, sid, login, exp = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local device, mode, max, cap, overflow, meta = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]

local banned = tonumber(redis.call('HGET', KEYS[3], 'u'))
if banned and banned > now then
  return { -2, banned }
end

upgrade(Z, R)
prune(Z, R, now)
if score(Z, sid) or redis.call('HEXISTS', R, sid) == 1 then
  return { -1, 'exists' }
end

-- Least recently active first: that is who `evict_oldest` evicts.
local live = heads(Z, R, now)
local evicted = {}
local function evict(entry)
  for _, s in ipairs(remove_session(Z, R, origin_of(entry[1], entry[3]))) do
    evicted[#evicted + 1] = s
  end
end

if mode == 's' then
  for _, e in ipairs(live) do evict(e) end
  live = {}
else
  local same = {}
  if cap > 0 and device ~= '' then
    for _, e in ipairs(live) do
      if e[3] ~= nil and e[3].device == device then same[#same + 1] = e end
    end
  end
  -- Decide before changing anything, so a refusal leaves no trace.
  if overflow == 'r' then
    if cap > 0 and #same >= cap then return { 0, 'device' } end
    if #live >= max then return { 0, 'max' } end
  end
  while cap > 0 and #same >= cap do
    local victim = table.remove(same, 1)
    evict(victim)
    for i, e in ipairs(live) do
      if e[1] == victim[1] then table.remove(live, i) break end
    end
  end
  while #live >= max do
    evict(table.remove(live, 1))
  end
end

redis.call('ZADD', Z, exp, sid)
local r = { login = login, device = device, origin = '', pred = '', succ = '', grace = 0, meta = meta }
if needed(r) then put(R, sid, r) end
extend_ttl(Z, R, exp - now)
local out = { 1 }
for _, s in ipairs(evicted) do out[#out + 1] = s end
return out
