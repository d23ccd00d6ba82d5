-- Policy decisions, a batch of them in one call: for each, whitelist check, sliding-window
-- check, and the count. The batch runs atomically, so each decision in it does too, in order:
-- two decisions for the same client in one batch see each other's counts.
--
-- Per decision d (1-based), three keys:
-- KEYS[3d-2]  the client's log: sorted set, one member per accepted message, score = time in µs
-- KEYS[3d-1]  the whitelist key of the client's exact address
-- KEYS[3d]    the offender hash of the client's exact address (refusals per hour)
-- Shared by the batch, first in ARGV (the limits, from the settings):
--   M, the number of message limits, then M pairs: count, window in µs
--   R, the number of recipient limits, then R pairs: count, window in µs
--   OFFENDER_THRESHOLD
-- then per decision, two: its mode, "count" (DATA: check and record), "check" (RCPT: message
-- limits only) or "usage" (read every limit's current use; no whitelist check, nothing
-- recorded), and the recipients in its message.
--
-- Returns one reply per decision, in order: {code, index, used, compromised}: code 0 accepted
-- (recorded in "count" mode), 1 whitelisted, 2 message limit `index` reached, 3 recipient limit
-- `index` reached; `used` is what that limit had counted before this message; `compromised`,
-- on a refusal, is the client's refusals this hour when this one brought them to exactly
-- OFFENDER_THRESHOLD, else 0. "usage" replies {4, used1, used2, ...}, message limits first.
--
-- Time comes from Redis (TIME, once per batch), not from the daemons, so several policy servers
-- on several hosts share one clock and the limit stays exact across them.

-- Lua 5.1 prints numbers with 14 significant digits; times in µs have 16, so every number that
-- becomes a string goes through %d.
local function int(x) return string.format('%d', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local m = tonumber(ARGV[1])
local message_limits, recipient_limits = {}, {}
local longest = 0
for i = 1, m do
  local n, w = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  message_limits[i] = {n, w}
  if w > longest then longest = w end
end
local r = tonumber(ARGV[2 * m + 2])
for j = 1, r do
  local n, w = tonumber(ARGV[2 * m + 1 + 2 * j]), tonumber(ARGV[2 * m + 2 + 2 * j])
  recipient_limits[j] = {n, w}
  if w > longest then longest = w end
end
local threshold = tonumber(ARGV[2 * m + 2 * r + 3])

-- What every decision of the batch writes or reads the same way, as strings made once.
local now_text = int(now)
for i = 1, m do message_limits[i][3] = int(now - message_limits[i][2]) end
for j = 1, r do recipient_limits[j][3] = int(now - recipient_limits[j][2]) end
local stale_before = '(' .. int(now - longest)
local log_ttl = int(math.ceil(longest / 1000) + 1000)
local first_decision_arg = 2 * m + 2 * r + 4

-- The offender view (`smtp-whitelist top`): a refusal is also counted per client address, in
-- this same atomic step so it costs no round trip. Field "h<hour>" counts the refusals of that
-- clock hour (Redis' clock); "limit" and "last" say which limit refused last, and when. Exactly
-- one refusal, on whichever daemon, brings an hour's count to the threshold: it alone returns
-- the count, so a likely-compromised client is logged once per hour however many daemons
-- share this Redis.
local OFFENDER_HOURS = 25  -- hours kept: `top --since` reaches back a day
local hour = math.floor(now / 3600000000)
local function refused(offender, code, i, used, limit)
  local count = redis.call('HINCRBY', offender, 'h' .. hour, 1)
  local kind = (code == 2) and 'messages' or 'recipients'
  redis.call('HSET', offender, 'limit', kind .. ' ' .. int(limit[1]) .. ' ' .. int(limit[2] / 1000000),
    'last', now_text)
  if count == 1 then
    -- A new hour: forget the hours that `top` no longer reads (at most one per hour).
    for _, field in ipairs(redis.call('HKEYS', offender)) do
      local h = tonumber(string.match(field, '^h(%d+)$'))
      if h and h <= hour - OFFENDER_HOURS then redis.call('HDEL', offender, field) end
    end
  end
  redis.call('EXPIRE', offender, OFFENDER_HOURS * 3600)
  return {code, i, used, (count == threshold) and count or 0}
end

local function decide(log, grant, offender, mode, rcpts)
  if mode ~= 'usage' and redis.call('EXISTS', grant) == 1 then
    return {1, 0, 0, 0}
  end
  local usage = {4}
  if mode == 'count' then
    -- Entries older than the longest window can never count again: drop them, so a client's
    -- log holds at most what its limits allow. (Only when about to add: reading needs no trim.)
    redis.call('ZREMRANGEBYSCORE', log, '-inf', stale_before)
  end
  for i = 1, m do
    local limit = message_limits[i]
    local used = redis.call('ZCOUNT', log, limit[3], '+inf')
    if mode == 'usage' then
      usage[#usage + 1] = used
    elseif (mode == 'count' and used + 1 > limit[1]) or (mode == 'check' and used >= limit[1]) then
      return refused(offender, 2, i, used, limit)
    end
  end
  if mode == 'check' then
    return {0, 0, 0, 0}
  end
  -- A member is "recipients:time[:n]"; summing the recipients of the window is O(messages in
  -- it), which the message limits keep small.
  for j = 1, r do
    local limit = recipient_limits[j]
    local used = 0
    for _, member in ipairs(redis.call('ZRANGE', log, limit[3], '+inf', 'BYSCORE')) do
      used = used + tonumber(string.match(member, '^(%d+)'))
    end
    if mode == 'usage' then
      usage[#usage + 1] = used
    elseif used + rcpts > limit[1] then
      return refused(offender, 3, j, used, limit)
    end
  end
  if mode == 'usage' then
    return usage
  end
  if longest > 0 then
    local member = int(rcpts) .. ':' .. now_text
    local n = 0
    while redis.call('ZADD', log, 'NX', now_text, member) == 0 do
      n = n + 1
      member = int(rcpts) .. ':' .. now_text .. ':' .. n
    end
    -- The log expires a little after its newest entry leaves the longest window.
    redis.call('PEXPIRE', log, log_ttl)
  end
  return {0, 0, 0, 0}
end

local replies = {}
for d = 1, #KEYS / 3 do
  local at = first_decision_arg + 2 * (d - 1)
  replies[d] = decide(KEYS[3 * d - 2], KEYS[3 * d - 1], KEYS[3 * d], ARGV[at], tonumber(ARGV[at + 1]))
end
return replies
