"""The rate governor's Lua scripts (:mod:`worker.ratelimit` runs them; its docstring is the
protocol: the key layout, GCRA, Pacing and Priorities).

Each script is one atomic operation across the fleet and reads Redis's own clock (``TIME``),
so hosts whose clocks disagree still agree on the slots. Above each script, a comment names its
KEYS and ARGV in the order :class:`worker.ratelimit.RateGovernor` passes them.
"""

from worker import outage

# Shared Lua helpers: Redis's clock in microseconds, and the GCRA interval and tolerance from
# the configured rate (ARGV[1]), the learned rate and slack (KEYS[2], KEYS[4]) and the burst
# (ARGV[2]). Numbers are written with %.0f: Lua's tostring keeps only 14 digits, too few for
# epoch us. A category's keys are read together in one MGET (tat, learned, hold, slack).
_PRELUDE = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function interval_of(learned, slack)
  local rate = tonumber(ARGV[1])
  learned = tonumber(learned)
  if learned and learned > 0 and learned < rate then rate = learned end
  -- slack: seconds added to the spread after 429s (see Pacing), stretching the interval
  local interval = math.ceil(1000000 * (1 + (tonumber(slack) or 0) / 1000000) / rate)
  return interval, (tonumber(ARGV[2]) - 1) * interval
end
local function gcra()
  local stored = redis.call('MGET', KEYS[2], KEYS[4])
  return interval_of(stored[1], stored[2])
end
local function set_until(key, value, now)
  redis.call('SET', key, string.format('%.0f', value),
             'PX', math.floor((value - now) / 1000) + 1000)
end
local function push_back(deadline, now, tolerance)
  -- the next slot is max(now, tat - tolerance): >= deadline once tat >= deadline + tolerance
  local tat = tonumber(redis.call('GET', KEYS[1])) or now
  if tat < deadline + tolerance then set_until(KEYS[1], deadline + tolerance, now) end
  local hold = tonumber(redis.call('GET', KEYS[3])) or 0
  if hold < deadline then set_until(KEYS[3], deadline, now) end
end
"""

# KEYS: tat, learned, hold, slack, line. ARGV: rate, burst, max_ahead_us,
# held slot_us or '', use_within_us, '1' to hand a refused caller a return time from the line.
# ``stored``: the MGET of KEYS[1..4].
_RESERVE_FN = """
local function reserve(now, stored)
  if ARGV[4] ~= '' then
    local held = tonumber(ARGV[4])
    local hold = tonumber(stored[3]) or 0
    if held >= hold and now <= held + tonumber(ARGV[5]) then
      return {1, math.max(held - now, 0), held}
    end
  end
  local interval, tolerance = interval_of(stored[2], stored[4])
  local tat = math.max(tonumber(stored[1]) or now, now)
  local slot = math.max(tat - tolerance, now)
  local ahead = tonumber(ARGV[3])
  if slot - now > ahead then
    if ARGV[6] ~= '1' then return {0, slot - now, slot} end
    -- come back when the schedule has room within reach, one caller per interval
    local line = tonumber(redis.call('GET', KEYS[5])) or 0
    local back = math.max(line, slot - ahead, now)
    set_until(KEYS[5], back + interval, now)
    return {0, back - now, back}
  end
  set_until(KEYS[1], tat + interval, now)
  return {1, slot - now, slot}
end
"""
RESERVE = (
    _PRELUDE
    + _RESERVE_FN
    + "return reserve(now_us(), redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4]))\n"
)

# A host's daily count (see :meth:`worker.ratelimit.RateGovernor.count_host_call`): ``add`` is
# '1' to count a call, '0' to read; the count of the UTC ``day`` (days since the epoch, by
# Redis's clock). The key's expiry is the day's: set once, when the day's count starts.
_HOST_COUNT_FN = """
local function host_count(key, add, margin_s, day)
  local stored = tonumber(redis.call('HGET', key, 'day'))
  if add == '0' then
    if stored == day then return tonumber(redis.call('HGET', key, 'n')) or 0 end
    return 0
  end
  if stored ~= day then
    redis.call('HSET', key, 'day', string.format('%d', day), 'n', 0)
    redis.call('EXPIREAT', key, (day + 1) * 86400 + tonumber(margin_s))
  end
  return redis.call('HINCRBY', key, 'n', 1)
end
"""

# One round trip for a call's whole permit (:meth:`worker.ratelimit.RateGovernor.permit`),
# and the outage breaker's check before it when it rides along (:mod:`worker.outage`).
# KEYS: as RESERVE, then the host's block and count keys (both absent for a call no host cap
# counts), then the breaker's open and probe keys (absent unless asked).
# ARGV: as RESERVE, then count_within_us (the host is counted once a slot this close is
# granted; '' never), the count key's margin_s, the breaker's ticket ('' not asked) and probe
# lease ms. Returns {granted, delay_us, slot_us, blocked_until_us (0: not blocked; then
# nothing else was done), host count (-1: not counted), the breaker's answer (absent when not
# asked; while it holds the attempt nothing else was done)}.
PERMIT = (
    _PRELUDE
    + _RESERVE_FN
    + _HOST_COUNT_FN
    + outage.CHECK_FN
    + """
local now = now_us()
local asked = ARGV[9] ~= ''
local hosted = #KEYS - (asked and 2 or 0) == 7
local breaker
if asked then
  breaker = outage_check(KEYS[#KEYS - 1], KEYS[#KEYS], ARGV[9], ARGV[10], now)
  if breaker[1] == 1 then return {0, 0, now, 0, -1, breaker} end
end
local read = {KEYS[1], KEYS[2], KEYS[3], KEYS[4]}
if hosted then read[5] = KEYS[6] end
local stored = redis.call('MGET', unpack(read))
if stored[5] then return {0, 0, now, stored[5], -1, breaker} end
local permit = reserve(now, stored)
local counted = -1
if hosted and ARGV[7] ~= '' and permit[1] == 1 and permit[2] <= tonumber(ARGV[7]) then
  counted = host_count(KEYS[7], '1', ARGV[8], math.floor(now / 86400000000))
end
return {permit[1], permit[2], permit[3], 0, counted, breaker}
"""
)

# KEYS: tat, learned, hold, slack. ARGV: rate, burst, seconds_us, slack step_us, max_us, ttl_ms.
PENALIZE = (
    _PRELUDE
    + """
local now = now_us()
local interval, tolerance = gcra()
push_back(now + tonumber(ARGV[3]), now, tolerance)
if ARGV[4] ~= '0' then
  local slack = (tonumber(redis.call('GET', KEYS[4])) or 0) + tonumber(ARGV[4])
  slack = math.min(slack, tonumber(ARGV[5]))
  redis.call('SET', KEYS[4], string.format('%.0f', slack), 'PX', ARGV[6])
end
return 1
"""
)

# KEYS: tat, learned, hold, slack. ARGV: rate, burst, limit or '', remaining or '',
# learned_ttl_ms.
OBSERVE = (
    _PRELUDE
    + """
local now = now_us()
local limit = tonumber(ARGV[3])
if limit and limit >= 1 and limit < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], string.format('%d', limit), 'PX', ARGV[5])
end
local remaining = tonumber(ARGV[4])
if remaining and remaining <= 0 then
  local interval, tolerance = gcra()
  push_back((math.floor(now / 1000000) + 1) * 1000000, now, tolerance)
end
return 1
"""
)

# KEYS: sent log, learned, slack. ARGV: calls per window, window_us, member.
# The log is trimmed to the window at every admit, so it holds at most a window's calls and
# needs no expiry.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local count = tonumber(ARGV[1])
local stored = redis.call('MGET', KEYS[2], KEYS[3])
local learned = tonumber(stored[1])
if learned and learned >= 1 and learned < count then count = math.floor(learned) end
local window = tonumber(ARGV[2]) + (tonumber(stored[2]) or 0)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < count then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
  return {1, 0, now}
end
local oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
return {0, oldest + window - now, now}
"""

# KEYS: block. ARGV: until_us. A block is only ever extended, never shortened.
BLOCK_HOST = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local deadline = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1])) or 0
if deadline <= now or deadline <= current then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], math.ceil(deadline / 1000))
return 1
"""

# KEYS: count. ARGV: '1' to count a call, '0' to read; margin_s. Returns today's count.
HOST_COUNT = (
    _HOST_COUNT_FN
    + "local day = math.floor(tonumber(redis.call('TIME')[1]) / 86400)\n"
    + "return host_count(KEYS[1], ARGV[1], ARGV[2], day)\n"
)


# KEYS: the meeting's window. ARGV: limit, window_us. Counts one update and returns 0 when
# the window has room; otherwise counts nothing and returns when the oldest update leaves it.
MEETING_UPDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return string.format('%.0f', tonumber(oldest[2]) + window)
end
local member = string.format('%.0f', now)
while redis.call('ZSCORE', KEYS[1], member) do
  now = now + 1
  member = string.format('%.0f', now)
end
redis.call('ZADD', KEYS[1], member, member)
redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
return '0'
"""
