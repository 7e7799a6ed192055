-- record.lua: helpers shared by every session script (prepended to each at
-- load time by src/store/redis.rs; not a script of its own).
--
-- One key per user: H = <prefix>{UID}, a hash (listpack-encoded while
-- small), field = sid (16 raw bytes), value = the session record:
--
--   "exp|login|device|origin|pred|succ|grace|meta", or "exp|login" when
--   every other field is empty (grace 0): most sessions, and the bytes
--   per session are what Redis memory is made of. Times are ms since the
--   epoch in base 36 (8 characters instead of 13).
--   exp     idle expiry; the sid is live while
--           exp > now. 0 = taken out of the live set (a theft tombstone)
--   login   session start, ms
--   device  device type ('' = none)
--   origin  hex of the session's first sid ('' = this sid is the first)
--   pred    hex of the sid this one succeeded, until first use marks it
--   succ    hex of this sid's successor after a rotation ('' = none)
--   grace   ms at which this (rotated) sid stops being accepted; 0 while
--           its successor has not been used
--   meta    optional metadata, opaque to the scripts (may contain '|')
-- A sid that is no longer live but keeps a record with succ set is a theft
-- tombstone: presenting it after its grace revokes its whole session.
-- H expires (PEXPIRE) once nothing in it can be alive.

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local function unhex(h)
  return (string.gsub(h, '..', function(x) return string.char(tonumber(x, 16)) end))
end

local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'

local function b36(n)
  if n <= 0 then return '0' end
  local out = {}
  while n > 0 do
    local d = n % 36
    out[#out + 1] = string.sub(DIGITS, d + 1, d + 1)
    n = (n - d) / 36
  end
  return string.reverse(table.concat(out))
end

local function parse(rec)
  if not rec then return nil end
  local f, i = {}, 1
  for k = 1, 7 do
    local j = string.find(rec, '|', i, true)
    if not j then
      -- The short form: "exp|login".
      if k ~= 2 then return nil end
      local exp, login = tonumber(f[1], 36), tonumber(string.sub(rec, i), 36)
      if not exp or not login then return nil end
      return { exp = exp, login = login, device = '', origin = '', pred = '', succ = '', grace = 0, meta = '' }
    end
    f[k] = string.sub(rec, i, j - 1)
    i = j + 1
  end
  local exp, login, grace = tonumber(f[1], 36), tonumber(f[2], 36), tonumber(f[7], 36)
  if not exp or not login or not grace then return nil end
  return { exp = exp, login = login, device = f[3], origin = f[4], pred = f[5], succ = f[6], grace = grace,
           meta = string.sub(rec, i) }
end

local function fmt(r)
  if r.device == '' and r.origin == '' and r.pred == '' and r.succ == '' and r.grace == 0 and r.meta == '' then
    return b36(r.exp) .. '|' .. b36(r.login)
  end
  return table.concat({ b36(r.exp), b36(r.login), r.device, r.origin, r.pred, r.succ, b36(r.grace), r.meta }, '|')
end

local function get(H, sid)
  return parse(redis.call('HGET', H, sid))
end

local function put(H, sid, r)
  redis.call('HSET', H, sid, fmt(r))
end

local function origin_of(sid, r)
  if r.origin == '' then return hex(sid) end
  return r.origin
end

-- The key expires by itself once nothing in it can be alive.
local function extend_ttl(key, ttl)
  if ttl > 0 and redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Every record of the user: { {sid, record or nil if malformed}, ... }.
local function records(H)
  local out = {}
  local all = redis.call('HGETALL', H)
  for i = 1, #all, 2 do
    out[#out + 1] = { all[i], parse(all[i + 1]) }
  end
  return out
end

-- Removes every sid of the session `o` (an origin), and malformed records;
-- returns the sids removed.
local function remove_session(H, o)
  local removed = {}
  for _, e in ipairs(records(H)) do
    local sid, r = e[1], e[2]
    if r == nil or origin_of(sid, r) == o then
      redis.call('HDEL', H, sid)
      if r ~= nil then removed[#removed + 1] = sid end
    end
  end
  return removed
end

-- Takes sids whose idle expiry has passed out of the live set, and drops
-- records no live sid needs (theft tombstones live as long as their session
-- does) and malformed ones.
local function prune(H, now)
  local all = records(H)
  local live = {}
  for _, e in ipairs(all) do
    if e[2] ~= nil and e[2].exp > now then
      live[origin_of(e[1], e[2])] = true
    end
  end
  for _, e in ipairs(all) do
    local sid, r = e[1], e[2]
    if r == nil then
      redis.call('HDEL', H, sid)
    elseif r.exp <= now then
      if r.succ ~= '' and live[origin_of(sid, r)] then
        if r.exp ~= 0 then
          r.exp = 0
          put(H, sid, r)
        end
      else
        redis.call('HDEL', H, sid)
      end
    end
  end
end

-- The current sids of the live sessions (not rotated-away ones), oldest
-- login first: { {sid, record}, ... }.
local function heads(H, now)
  local out = {}
  for _, e in ipairs(records(H)) do
    local r = e[2]
    if r ~= nil and r.exp > now and r.succ == '' then out[#out + 1] = e end
  end
  table.sort(out, function(a, b)
    if a[2].login ~= b[2].login then return a[2].login < b[2].login end
    return a[1] < b[1]
  end)
  return out
end

-- Rotated-away sids a session keeps (theft tombstones and sids in their
-- grace): the newest MAX_ROTATED. Without a bound a long-lived session that
-- rotates often would grow without limit (absolute lifetime / rotate
-- interval records); a token older than that many rotations, replayed, is
-- simply unknown (rejected, but no theft alarm).
local MAX_ROTATED = 8

local function trim_lineage(H, o)
  local rotated = {}
  for _, e in ipairs(records(H)) do
    local sid, r = e[1], e[2]
    if r ~= nil and r.succ ~= '' and origin_of(sid, r) == o then
      local g = r.grace
      if g == 0 then g = math.huge end
      rotated[#rotated + 1] = { g, hex(sid), sid }
    end
  end
  if #rotated <= MAX_ROTATED then return end
  table.sort(rotated, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  for k = 1, #rotated - MAX_ROTATED do redis.call('HDEL', H, rotated[k][3]) end
end
