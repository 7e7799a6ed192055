-- record.lua: helpers shared by every script (prepended to each at load
-- time by src/store/redis.rs; not a script of its own).
--
-- Keys of one user (both carry the {UID} hash tag: one cluster slot):
--   S = <prefix>{UID}:s  sorted set, member = sid (16 raw bytes),
--                        score = idle expiry, ms since the epoch
--   H = <prefix>{UID}:h  hash, field = sid, value = the session record
--
-- Record: "login|device|origin|pred|succ|grace|meta"
--   login   session start, ms
--   device  device type ('' = none)
--   origin  hex of the session's first sid ('' = this sid is the first)
--   pred    hex of the sid this one succeeded, until first use marks it
--   succ    hex of this sid's successor after a rotation ('' = none)
--   grace   ms at which this (rotated) sid stops being accepted; 0 while
--           its successor has not been used
--   meta    optional metadata, opaque to the scripts (may contain '|')
-- A sid that is no longer in S but keeps a record with succ set is a theft
-- tombstone: presenting it revokes its whole session.

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local function unhex(h)
  return (string.gsub(h, '..', function(x) return string.char(tonumber(x, 16)) end))
end

local function parse(rec)
  if not rec then return nil end
  local f, i = {}, 1
  for k = 1, 6 do
    local j = string.find(rec, '|', i, true)
    if not j then return nil end
    f[k] = string.sub(rec, i, j - 1)
    i = j + 1
  end
  local login, grace = tonumber(f[1]), tonumber(f[6])
  if not login or not grace then return nil end
  return { login = login, device = f[2], origin = f[3], pred = f[4], succ = f[5], grace = grace,
           meta = string.sub(rec, i) }
end

local function fmt(r)
  return table.concat({ r.login, r.device, r.origin, r.pred, r.succ, r.grace, r.meta }, '|')
end

local function origin_of(sid, r)
  if r.origin == '' then return hex(sid) end
  return r.origin
end

-- Keys expire by themselves once nothing in them can be alive.
local function extend_ttl(key, ttl)
  if ttl > 0 and redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Removes every sid of the session `o` (an origin); returns them.
local function remove_session(S, H, o)
  local removed = {}
  local all = redis.call('HGETALL', H)
  for i = 1, #all, 2 do
    local r = parse(all[i + 1])
    if r == nil or origin_of(all[i], r) == o then
      redis.call('ZREM', S, all[i])
      redis.call('HDEL', H, all[i])
      if r ~= nil then removed[#removed + 1] = all[i] end
    end
  end
  return removed
end

-- Drops sids whose idle expiry has passed, and records that no live sid
-- needs any more (theft tombstones live as long as their session does).
local function prune(S, H, now)
  redis.call('ZREMRANGEBYSCORE', S, '-inf', now)
  local all = redis.call('HGETALL', H)
  local live = {}
  local records = {}
  for i = 1, #all, 2 do
    local r = parse(all[i + 1])
    records[#records + 1] = { all[i], r }
    if r ~= nil and redis.call('ZSCORE', S, all[i]) then
      live[origin_of(all[i], r)] = true
    end
  end
  for _, e in ipairs(records) do
    local sid, r = e[1], e[2]
    if r == nil then
      redis.call('HDEL', H, sid)
    elseif not redis.call('ZSCORE', S, sid) and not (r.succ ~= '' and live[origin_of(sid, r)]) then
      redis.call('HDEL', H, sid)
    end
  end
end

-- The current sids of the live sessions (not rotated-away ones), oldest
-- login first: { {sid, record}, ... }.
local function heads(S, H)
  local out = {}
  local members = redis.call('ZRANGE', S, 0, -1)
  for _, sid in ipairs(members) do
    local r = parse(redis.call('HGET', H, sid))
    if r ~= nil and r.succ == '' then out[#out + 1] = { sid, r } end
  end
  table.sort(out, function(a, b)
    if a[2].login ~= b[2].login then return a[2].login < b[2].login end
    return a[1] < b[1]
  end)
  return out
end
