"""The Lua of the pool's budgets (``ratelimit_redis.py``): one script per operation, each
atomic in Redis, each reading the clock with ``TIME`` so that no pod's clock matters.

Times are microseconds since the epoch, written with ``%.0f``: Lua's own number-to-string
conversion keeps 14 digits, which would round them to tens of microseconds.
"""

from __future__ import annotations

FORMAT = "local function f(x) return string.format('%.0f', x) end\n"

#: KEYS: per scope ``done, leases, cool``. ARGV: lease_us, recheck_us, nscopes, then per
#: scope ``nwin, (limit, span_us)*``, then nwaiters, then per waiter ``id, n, (scope)*``
#: (the anchor, scope 1, first). Returns ``{the anchor's own wait, each waiter's wait}``
#: in µs (0 = granted), then the anchor's sends per window (finished and on the wire).
#: A scope is read only when a waiter needs it, and a waiter whose anchor is full is
#: answered the anchor's time without reading its chat: a lower bound, so it asks again
#: then, never too early to be safe. A lease that lapsed (its pod was killed with sends on
#: the wire or finishes not yet written) becomes a finish at its lapse time: dropping it
#: would forget sends the platform counted, and the pool would overshoot the app's
#: minute window once it is full.
ACQUIRE = (
    FORMAT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease_us, recheck_us = tonumber(ARGV[1]), tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local pos = 4
local scopes = {}
for j = 1, m do
  local s = {j = j, wins = {}, longest = 0}
  local nwin = tonumber(ARGV[pos]); pos = pos + 1
  for w = 1, nwin do
    local win = {limit = tonumber(ARGV[pos]), span = tonumber(ARGV[pos + 1])}
    pos = pos + 2
    s.wins[w] = win
    if win.span > s.longest then s.longest = win.span end
  end
  scopes[j] = s
end
local function load(s)
  if s.loaded then return s end
  s.loaded = true
  s.done, s.leases = KEYS[3 * s.j - 2], KEYS[3 * s.j - 1]
  -- A lapsed lease's pod died (or stopped renewing) with the send maybe made: it counts
  -- as finished when it lapsed, never as a free slot.
  local lapsed = redis.call('ZRANGEBYSCORE', s.leases, '-inf', f(now), 'WITHSCORES')
  if #lapsed > 0 then
    for i = 1, #lapsed, 2 do redis.call('ZADD', s.done, 'NX', lapsed[i + 1], lapsed[i]) end
    redis.call('ZREMRANGEBYSCORE', s.leases, '-inf', f(now))
    redis.call('PEXPIRE', s.done, math.ceil(s.longest / 1000) + 1000)
  end
  redis.call('ZREMRANGEBYSCORE', s.done, '-inf', f(now - s.longest))
  s.held = redis.call('ZCARD', s.leases)
  for _, win in ipairs(s.wins) do
    win.count = redis.call('ZCOUNT', s.done, '(' .. f(now - win.span), '+inf')
  end
  s.cool = tonumber(redis.call('GET', KEYS[3 * s.j]) or '0')
  return s
end
local function free_at(s)
  load(s)
  if s.free then return s.free end
  local at = math.max(now, s.cool)
  for _, win in ipairs(s.wins) do
    local excess = win.count + s.held - win.limit
    if excess >= 0 then
      if excess < win.count then
        local e = redis.call('ZRANGEBYSCORE', s.done, '(' .. f(now - win.span), '+inf',
                             'LIMIT', excess, 1, 'WITHSCORES')
        at = math.max(at, tonumber(e[2]) + win.span)
      else
        at = math.max(at, now + recheck_us)  -- every slot is held by a send on the wire
      end
    end
  end
  s.free = at
  return at
end
local n = tonumber(ARGV[pos]); pos = pos + 1
local out = {}
for i = 1, n do
  local id, k = ARGV[pos], tonumber(ARGV[pos + 1])
  pos = pos + 2
  local mine, at = {}, now
  for q = 1, k do
    local s = scopes[tonumber(ARGV[pos + q - 1])]
    mine[q] = s
    if at <= now then at = math.max(at, free_at(s)) end
  end
  pos = pos + k
  if at <= now then
    for _, s in ipairs(mine) do
      redis.call('ZADD', s.leases, f(now + lease_us), id)
      s.held = s.held + 1
      s.free = nil
      s.granted = true
    end
    out[i + 1] = 0
  else
    out[i + 1] = math.ceil(at - now)
  end
end
out[1] = math.ceil(free_at(scopes[1]) - now)
local anchor = load(scopes[1])
for _, win in ipairs(anchor.wins) do out[#out + 1] = win.count + anchor.held end
for _, s in ipairs(scopes) do
  if s.granted then redis.call('PEXPIRE', s.leases, math.ceil(lease_us / 1000) + 1000) end
end
return out
"""
)

#: KEYS: per scope ``done, leases``. ARGV: lease_us, nscopes, (longest_us)*, n, then per
#: entry ``id, age_us, k, (scope)*``; age -1: the lease was never used (no finish entry);
#: age -2: a *hold*, a local scope's send granted by its pod alone (``ratelimit_carry.py``)
#: takes a lease here after the fact, so that its next owner counts it if this pod dies.
FINISH = (
    FORMAT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease_us = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local longest = {}
for j = 1, m do longest[j] = tonumber(ARGV[2 + j]) end
local pos = m + 3
local n = tonumber(ARGV[pos]); pos = pos + 1
local touched = {}
for i = 1, n do
  local id, age, k = ARGV[pos], tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  pos = pos + 3
  for q = 1, k do
    local j = tonumber(ARGV[pos])
    pos = pos + 1
    if age == -2 then
      -- Leases that lapsed a window ago count for nothing any more (nobody else trims
      -- a local scope's leases).
      redis.call('ZREMRANGEBYSCORE', KEYS[2 * j], '-inf', f(now - longest[j]))
      redis.call('ZADD', KEYS[2 * j], f(now + lease_us), id)
      redis.call('PEXPIRE', KEYS[2 * j], math.ceil(lease_us / 1000) + 1000)
    else
      redis.call('ZREM', KEYS[2 * j], id)
    end
    if age >= 0 and age < longest[j] then
      redis.call('ZADD', KEYS[2 * j - 1], f(now - age), id)
      touched[j] = true
    end
  end
end
for j = 1, m do
  if touched[j] then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * j - 1], '-inf', f(now - longest[j]))
    redis.call('PEXPIRE', KEYS[2 * j - 1], math.ceil(longest[j] / 1000) + 1000)
  end
end
return n
"""
)

#: KEYS: per scope ``done, leases``. ARGV: per scope its longest window in µs. Returns per
#: scope ``n``, then ``n`` pairs ``id, offset_us``: when each send finished, or when each
#: lease lapses (or lapsed), relative to now. Read-only: what a pod taking a local scope
#: over seeds its window with (``ratelimit_carry.py``).
HISTORY = (
    FORMAT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for j = 1, #ARGV do
  local horizon = '(' .. f(now - tonumber(ARGV[j]))
  local done = redis.call('ZRANGEBYSCORE', KEYS[2 * j - 1], horizon, '+inf', 'WITHSCORES')
  local leases = redis.call('ZRANGEBYSCORE', KEYS[2 * j], horizon, '+inf', 'WITHSCORES')
  out[#out + 1] = (#done + #leases) / 2
  for _, entries in ipairs({done, leases}) do
    for i = 1, #entries, 2 do
      out[#out + 1] = entries[i]
      out[#out + 1] = math.floor(tonumber(entries[i + 1]) - now)
    end
  end
end
return out
"""
)

#: KEYS: lease sets. ARGV: lease_us, then per key ``n, (id)*``. Only leases still there
#: are renewed (XX): one that finished meanwhile must not come back.
RENEW = (
    FORMAT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1])
local pos = 2
for j = 1, #KEYS do
  local n = tonumber(ARGV[pos]); pos = pos + 1
  for i = 1, n do
    redis.call('ZADD', KEYS[j], 'XX', f(until_us), ARGV[pos])
    pos = pos + 1
  end
  redis.call('PEXPIRE', KEYS[j], math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 0
"""
)

#: KEYS: cool keys. ARGV: seconds in µs. A cool-down only ever moves later.
COOL = (
    FORMAT
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local us = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local cur = tonumber(redis.call('GET', key) or '0')
  if cur < now + us then
    redis.call('SET', key, f(now + us), 'PX', math.ceil(us / 1000) + 1)
  end
end
return 0
"""
)
