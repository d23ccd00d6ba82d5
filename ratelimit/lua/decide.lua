-- One policy decision, atomically: whitelist check, sliding-window check, and the count.
--
-- KEYS[1]  the client's log: sorted set, one member per accepted message, score = time in µs
-- KEYS[2]  the whitelist key of the client's exact address
-- KEYS[3]  the offender hash of the client's exact address (refusals per hour; optional)
-- ARGV[1]  mode: "count" (DATA: check and record), "check" (RCPT: message limits only),
--          "usage" (read every limit's current use; no whitelist check, nothing recorded)
-- ARGV[2]  recipients in this message
-- ARGV[3]  M, the number of message limits, then M pairs: count, window in µs
-- then     R, the number of recipient limits, then R pairs: count, window in µs
-- then     OFFENDER_THRESHOLD (the last ARGV)
--
-- Returns {code, index, used}: code 0 accepted (recorded in "count" mode), 1 whitelisted,
-- 2 message limit ARGV pair `index` reached, 3 recipient limit `index` reached; `used` is what
-- that limit had counted before this message. "usage" returns {4, used1, used2, ...}.
-- A refusal (code 2 or 3) has a fourth element: the client's refusals this hour when this one
-- brought them to exactly OFFENDER_THRESHOLD, else 0.
--
-- Time comes from Redis (TIME), not from the daemons, so several policy servers on several
-- hosts share one clock and the limit stays exact across them.

-- Lua 5.1 prints numbers with 14 significant digits; times in µs have 16, so every number that
-- becomes a string goes through %d.
local function int(x) return string.format('%d', x) end

local mode = ARGV[1]
if mode ~= 'usage' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, 0, 0}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rcpts = tonumber(ARGV[2])

local m = tonumber(ARGV[3])
local r = tonumber(ARGV[4 + 2 * m])
local longest = 0
for i = 1, m + r do
  local at = (i <= m) and (2 + 2 * i) or (3 + 2 * i)
  local w = tonumber(ARGV[at + 1])
  if w > longest then longest = w end
end

-- The offender view (`smtp-whitelist top`): a refusal is also counted per client address, in
-- this same atomic step so it costs no round trip. Field "h<hour>" counts the refusals of that
-- clock hour (Redis' clock); "limit" and "last" say which limit refused last, and when. Exactly
-- one refusal, on whichever daemon, brings an hour's count to the threshold: it alone returns
-- the count, so a likely-compromised client is logged once per hour however many daemons
-- share this Redis.
local OFFENDER_HOURS = 25  -- hours kept: `top --since` reaches back a day
local function refused(code, i, used, n, w)
  local key = KEYS[3]
  if not key then return {code, i, used, 0} end
  local hour = math.floor(now / 3600000000)
  local count = redis.call('HINCRBY', key, 'h' .. hour, 1)
  local kind = (code == 2) and 'messages' or 'recipients'
  redis.call('HSET', key, 'limit', kind .. ' ' .. int(n) .. ' ' .. int(w / 1000000), 'last', int(now))
  if count == 1 then
    -- A new hour: forget the hours that `top` no longer reads (at most one per hour).
    for _, field in ipairs(redis.call('HKEYS', key)) do
      local h = tonumber(string.match(field, '^h(%d+)$'))
      if h and h <= hour - OFFENDER_HOURS then redis.call('HDEL', key, field) end
    end
  end
  redis.call('EXPIRE', key, OFFENDER_HOURS * 3600)
  return {code, i, used, (count == tonumber(ARGV[#ARGV])) and count or 0}
end

-- Entries older than the longest window can never count again: drop them, so a client's log
-- holds at most what its limits allow.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. int(now - longest))

local usage = {4}
for i = 1, m do
  local n, w = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local used = redis.call('ZCOUNT', KEYS[1], int(now - w), '+inf')
  if mode == 'usage' then
    usage[#usage + 1] = used
  elseif (mode == 'count' and used + 1 > n) or (mode == 'check' and used >= n) then
    return refused(2, i, used, n, w)
  end
end
if mode == 'check' then
  return {0, 0, 0}
end

-- A member is "recipients:time[:n]"; summing the recipients of the window is O(messages in it),
-- which the message limits keep small.
for j = 1, r do
  local at = 3 + 2 * m + 2 * j
  local n, w = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local used = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], int(now - w), '+inf', 'BYSCORE')) do
    used = used + tonumber(string.match(member, '^(%d+)'))
  end
  if mode == 'usage' then
    usage[#usage + 1] = used
  elseif used + rcpts > n then
    return refused(3, j, used, n, w)
  end
end
if mode == 'usage' then
  return usage
end

if longest > 0 then
  local member = int(rcpts) .. ':' .. int(now)
  local n = 0
  while redis.call('ZADD', KEYS[1], 'NX', int(now), member) == 0 do
    n = n + 1
    member = int(rcpts) .. ':' .. int(now) .. ':' .. n
  end
  -- The log expires a little after its newest entry leaves the longest window.
  redis.call('PEXPIRE', KEYS[1], int(math.ceil(longest / 1000) + 1000))
end
return {0, 0, 0}
