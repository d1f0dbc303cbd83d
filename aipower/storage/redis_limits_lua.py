"""The Lua scripts of the Redis rate limiter (`redis_limits`), their arguments and their answers. Storage layer.

Counters are plain integers, one key per window (`...:<window seconds>:<window number>`), expiring a second after
their window. A concurrency slot is a sorted set of the calls holding it, each scored with its own deadline.
"""

from __future__ import annotations

# KEYS[1] counter; ARGV: limit, window seconds, cost, now (seconds, float). Returns {allowed, used, ms to reset}.
HIT = """
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local reset_ms = math.floor(((math.floor(now / window) + 1) * window - now) * 1000)
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[3])
if used + cost > tonumber(ARGV[1]) then return {0, used, reset_ms} end
used = redis.call('INCRBY', KEYS[1], cost)
if used == cost then redis.call('PEXPIRE', KEYS[1], reset_ms + 1000) end
return {1, used, reset_ms}
"""
# Numbers travel as one space-separated argument (ARGV[1]), split here: redis-py encodes every argument of a command
# in Python, and an admission has about twenty.
_NUMBERS = """
local a = {}
for v in string.gmatch(ARGV[1], '[^ ]+') do a[#a + 1] = tonumber(v) end
"""
# KEYS: one counter per check, then the slot (if a[3] = 1). Numbers: now (seconds, float), number of checks, has
# slot, slot limit, slot ttl (whole seconds), share, spare slots wanted, then limit, window seconds, cost, extra per
# check; ARGV[2]: this call's slot token. All or nothing: every window and the slot are checked before anything is
# counted. Admitted, each counter takes the call's cost plus a lease: up to `extra` more, at most 1/share of what is
# left after the call (so near the limit a lease shrinks to nothing); and the slot takes up to `spare slots wanted`
# more holds (tokens ARGV[2].1, .2, ...), at most 1/share of the places left. Plain admission asks for no extra.
# The slot's key lives as long as its longest hold (its expiry is only ever moved later).
# Returns {admitted, slot free, spare slots taken, then allowed, used, ms to reset, counted per check}.
# A call whose release is lost (a reply lost to a timeout, a process gone) frees its place at its deadline (now + slot
# ttl), however busy the key.
ADMIT = (
    _NUMBERS
    + """
local now, n, has_slot, share = a[1], a[2], a[3] == 1, a[6]
local slot_free, held = 1, 0
if has_slot then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now)
  held = redis.call('ZCARD', KEYS[n + 1])
  if held >= a[4] then slot_free = 0 end
end
local out = {1, slot_free, 0}
local admitted = slot_free
for i = 1, n do
  local b, o = 4 + 4 * i, 4 * i
  local limit, window, cost = a[b], a[b + 1], a[b + 2]
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  local allowed = 1
  if used + cost > limit then allowed = 0; admitted = 0 end
  out[o], out[o + 1], out[o + 3] = allowed, used, 0
  out[o + 2] = math.floor(((math.floor(now / window) + 1) * window - now) * 1000)
end
out[1] = admitted
if admitted == 0 then return out end
for i = 1, n do
  local b, o = 4 + 4 * i, 4 * i
  local cost = a[b + 2]
  local grant = cost + math.min(a[b + 3], math.floor((a[b] - out[o + 1] - cost) / share))
  local used = redis.call('INCRBY', KEYS[i], grant)
  if used == grant then redis.call('PEXPIRE', KEYS[i], out[o + 2] + 1000) end
  out[o + 1], out[o + 3] = used, grant
end
if has_slot then
  local deadline = now + a[5]
  redis.call('ZADD', KEYS[n + 1], deadline, ARGV[2])
  local spare = math.min(a[7], math.floor((a[4] - held - 1) / share))
  for j = 1, spare do redis.call('ZADD', KEYS[n + 1], deadline, ARGV[2] .. '.' .. j) end
  out[3] = spare
  if redis.call('TTL', KEYS[n + 1]) < a[5] then redis.call('EXPIRE', KEYS[n + 1], a[5]) end
end
return out
"""
)
# KEYS: the slot (if a[1] = 1), then one counter per usage. Numbers: has slot, now, then window, cost per usage;
# ARGV[2]: the call's slot token. Releasing a token twice, or one never admitted, changes nothing.
FINISH = (
    _NUMBERS
    + """
local first = 1
if a[1] == 1 then
  redis.call('ZREM', KEYS[1], ARGV[2])
  first = 2
end
local now = a[2]
for i = first, #KEYS do
  local j = 2 * (i - first) + 3
  local window, cost = a[j], a[j + 1]
  local used = redis.call('INCRBY', KEYS[i], cost)
  if used == cost then
    redis.call('PEXPIRE', KEYS[i], math.floor(((math.floor(now / window) + 1) * window - now) * 1000) + 1000)
  end
end
return 1
"""
)
# A lease's unused part, given back, and usage owed. KEYS: the send's id key (if a[2] = 1), the slot (if a[1] = 1),
# then counters. Numbers: has slot, has id, then per counter its window seconds and an amount: above 0 given back (the
# counter goes down by at most what it holds: one whose window ended is gone), below 0 owed (added). ARGV[2...]: slot
# tokens to release. A send whose id was seen (sent again after its answer was lost) changes no counter; a release
# is the same however often it is sent.
GIVE_BACK = (
    _NUMBERS
    + """
local first = 1
local counts = true
if a[2] == 1 then
  counts = redis.call('SET', KEYS[1], '1', 'NX', 'EX', 960) ~= false
  first = 2
end
if a[1] == 1 then
  for j = 2, #ARGV do redis.call('ZREM', KEYS[first], ARGV[j]) end
  first = first + 1
end
if not counts then return 0 end
for i = first, #KEYS do
  local window, amount = a[2 * (i - first) + 3], a[2 * (i - first) + 4]
  if amount < 0 then
    if redis.call('INCRBY', KEYS[i], -amount) == -amount then redis.call('PEXPIRE', KEYS[i], (window + 1) * 1000) end
  else
    amount = math.min(tonumber(redis.call('GET', KEYS[i]) or '0'), amount)
    if amount > 0 then redis.call('DECRBY', KEYS[i], amount) end
  end
end
return 1
"""
)
# Slot holds a live process keeps: each moved to a new deadline, if still held. KEYS[1]: the slot. Numbers: deadline,
# ttl (whole seconds); ARGV[2...]: the tokens. A hold already freed at its deadline stays free; a deadline only moves
# later (a clock stepped back shortens nothing).
KEEP = (
    _NUMBERS
    + """
for j = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', 'GT', a[1], ARGV[j]) end
if redis.call('TTL', KEYS[1]) < a[2] then redis.call('EXPIRE', KEYS[1], a[2]) end
return 1
"""
)
