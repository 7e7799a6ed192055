-- record.lua: helpers shared by every session script (prepended to each at
-- load time by src/store/redis.rs; not a script of its own).
--
-- Layout v3, per user; both keys share the {UID} hash tag (one cluster slot):
--
--   Z = <prefix>{UID}     sorted set: member = sid (16 raw bytes), score = the
--                         sid's idle expiry (ms). It holds exactly the sids a
--                         verify may accept now: current sids, and
--                         rotated-away sids until their grace ends. ZSCORE
--                         answers a verify, ZCOUNT counts, ZREMRANGEBYSCORE
--                         prunes, the lowest score is the least recently
--                         active session.
--   R = <prefix>{UID}:r   hash, only where needed: field = sid, value =
--                         "login|device|origin|pred|succ|grace|meta", or
--                         "#bound|login|device|origin|pred|succ|grace|meta"
--                         for a session bound to a device key, for sids with
--                         a device type, metadata, a binding or a rotation
--                         lineage, and for theft tombstones (rotated-away sids
--                         no longer in Z). A plain session (no device, no
--                         metadata, never rotated) is one member of Z and
--                         nothing else: its login time is in its long token.
--     login   session start, ms
--     device  device type ('' = none)
--     origin  hex of the session's first sid ('' = this sid is the first)
--     pred    hex of the sid this one succeeded, until first use marks it
--     succ    hex of this sid's successor after a rotation ('' = none)
--     grace   ms at which this (rotated) sid stops being accepted; 0 while
--             its successor has not been used
--     meta    optional metadata, opaque to the scripts (may contain '|')
--     bound   hex of the SHA-256 thumbprint (RFC 7638) of the device key the
--             session is bound to (device-bound sessions, bind.lua); only
--             in records that start with '#' ('' = not bound)
--   Times in records are ms since the epoch in base 36.
--
-- Both keys expire (PEXPIRE) once nothing in them can be alive. A user key
-- still in layout v2 (one hash of "exp|login[|...]" records) is converted
-- in place by the first script that touches it (upgrade below).

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

-- Splits `rec` into `n` '|'-separated fields, the last taking the rest.
local function fields(rec, n)
  local f, i = {}, 1
  for k = 1, n - 1 do
    local j = string.find(rec, '|', i, true)
    if not j then return nil end
    f[k] = string.sub(rec, i, j - 1)
    i = j + 1
  end
  f[n] = string.sub(rec, i)
  return f
end

local function parse(rec)
  if not rec then return nil end
  local bound = ''
  if string.sub(rec, 1, 1) == '#' then
    local j = string.find(rec, '|', 2, true)
    if not j then return nil end
    bound = string.sub(rec, 2, j - 1)
    if not string.match(bound, '^%x+$') or #bound ~= 64 then return nil end
    rec = string.sub(rec, j + 1)
  end
  local f = fields(rec, 7)
  if f == nil then return nil end
  local login, grace = tonumber(f[1], 36), tonumber(f[6], 36)
  if not login or not grace then return nil end
  return { login = login, device = f[2], origin = f[3], pred = f[4], succ = f[5], grace = grace, meta = f[7],
           bound = bound }
end

local function fmt(r)
  local body = table.concat({ b36(r.login), r.device, r.origin, r.pred, r.succ, b36(r.grace), r.meta }, '|')
  if r.bound ~= nil and r.bound ~= '' then return '#' .. r.bound .. '|' .. body end
  return body
end

-- Whether a sid needs a record at all.
local function needed(r)
  return r.device ~= '' or r.meta ~= '' or r.origin ~= '' or r.pred ~= '' or r.succ ~= ''
    or (r.bound ~= nil and r.bound ~= '')
end

-- The record of `sid`: nil when it has none, false when it is malformed.
local function record_of(R, sid)
  local raw = redis.call('HGET', R, sid)
  if not raw then return nil end
  return parse(raw) or false
end

local function put(R, sid, r)
  redis.call('HSET', R, sid, fmt(r))
end

local function score(Z, sid)
  local s = redis.call('ZSCORE', Z, sid)
  if s then return tonumber(s) end
  return nil
end

local function origin_of(sid, r)
  if r == nil or r.origin == '' then return hex(sid) end
  return r.origin
end

-- A script's error reply for data it cannot use; src/store/redis.rs maps
-- the TTBAD code to a typed error. Raised before anything is written.
local function bad(msg)
  error({ err = 'TTBAD ' .. msg })
end

-- Layout v2 -> v3, in place: "exp|login" or
-- "exp|login|device|origin|pred|succ|grace|meta" (base 36) per sid.
local function upgrade(Z, R)
  local t = redis.call('TYPE', Z)['ok']
  if t == 'zset' or t == 'none' then return end
  if t ~= 'hash' then bad(Z .. ' holds a ' .. t .. ', not a session set') end
  local ttl = redis.call('PTTL', Z)
  local all = redis.call('HGETALL', Z)
  local members, records = {}, {}
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local exp, login, r
    local f = fields(v, 8)
    if f ~= nil then
      exp, login = tonumber(f[1], 36), tonumber(f[2], 36)
      local grace = tonumber(f[7], 36)
      if exp and login and grace then
        r = { login = login, device = f[3], origin = f[4], pred = f[5], succ = f[6], grace = grace, meta = f[8] }
      end
    else
      local g = fields(v, 2)
      if g ~= nil then
        exp, login = tonumber(g[1], 36), tonumber(g[2], 36)
        if exp and login then
          r = { login = login, device = '', origin = '', pred = '', succ = '', grace = 0, meta = '' }
        end
      end
    end
    -- Malformed v2 records are dropped, as v2's own prune would have.
    if r ~= nil then
      if exp > 0 then members[#members + 1] = { exp, all[i] } end
      if needed(r) then records[#records + 1] = { all[i], r } end
    end
  end
  redis.call('DEL', Z)
  for _, m in ipairs(members) do redis.call('ZADD', Z, m[1], m[2]) end
  for _, e in ipairs(records) do put(R, e[1], e[2]) end
  if ttl > 0 then
    redis.call('PEXPIRE', Z, ttl)
    redis.call('PEXPIRE', R, ttl)
  end
end

-- Both keys live at least `ttl` ms more (extended, never shortened).
local function extend_ttl(Z, R, ttl)
  if ttl <= 0 then return end
  for _, k in ipairs({ Z, R }) do
    local p = redis.call('PTTL', k)
    if p ~= -2 and p < ttl then redis.call('PEXPIRE', k, ttl) end
  end
end

-- Every record: { sid = record or false if malformed }.
local function records(R)
  local out = {}
  local all = redis.call('HGETALL', R)
  for i = 1, #all, 2 do
    out[all[i]] = parse(all[i + 1]) or false
  end
  return out
end

-- Removes every sid of the session `o` (an origin) from both keys, and
-- malformed records; returns the sids removed.
local function remove_session(Z, R, o)
  local removed, seen = {}, {}
  local function drop(sid)
    if seen[sid] then return end
    seen[sid] = true
    local z = redis.call('ZREM', Z, sid)
    local h = redis.call('HDEL', R, sid)
    if z + h > 0 then removed[#removed + 1] = sid end
  end
  for sid, r in pairs(records(R)) do
    if r == false then
      redis.call('HDEL', R, sid)
    elseif origin_of(sid, r) == o then
      drop(sid)
    end
  end
  drop(unhex(o))
  return removed
end

-- Takes sids whose idle expiry has passed out of Z (ZREMRANGEBYSCORE) and
-- removes their records, except theft tombstones of sessions still live;
-- drops tombstones of sessions that are gone, orphan and malformed records.
local function prune(Z, R, now)
  redis.call('ZREMRANGEBYSCORE', Z, '-inf', now)
  if redis.call('EXISTS', R) == 0 then return end
  local recs = records(R)
  local live = {}
  local members = redis.call('ZRANGE', Z, 0, -1)
  for _, sid in ipairs(members) do
    live[origin_of(sid, recs[sid] or nil)] = true
  end
  for sid, r in pairs(recs) do
    if r == false then
      redis.call('HDEL', R, sid)
    elseif redis.call('ZSCORE', Z, sid) == false then
      if not (r.succ ~= '' and live[origin_of(sid, r)]) then
        redis.call('HDEL', R, sid)
      end
    end
  end
end

-- The current sids of the live sessions (not rotated-away ones), least
-- recently active first (lowest idle expiry, then sid):
-- { {sid, exp, record or nil}, ... }.
local function heads(Z, R, now)
  local out = {}
  local z = redis.call('ZRANGEBYSCORE', Z, '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #z, 2 do
    local sid = z[i]
    local r = parse(redis.call('HGET', R, sid))
    if r == nil or r.succ == '' then
      out[#out + 1] = { sid, tonumber(z[i + 1]), r }
    end
  end
  return out
end

-- Rotated-away sids a session keeps (theft tombstones and sids in their
-- grace): the newest MAX_ROTATED. Without a bound a long-lived session that
-- rotates often would grow without limit (absolute lifetime / rotate
-- interval records); a token older than that many rotations, replayed, is
-- simply unknown (rejected, but no theft alarm).
local MAX_ROTATED = 8

local function trim_lineage(Z, R, o)
  local rotated = {}
  for sid, r in pairs(records(R)) do
    if r ~= false and r.succ ~= '' and origin_of(sid, r) == o then
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
  for k = 1, #rotated - MAX_ROTATED do
    redis.call('HDEL', R, rotated[k][3])
    redis.call('ZREM', Z, rotated[k][3])
  end
end
