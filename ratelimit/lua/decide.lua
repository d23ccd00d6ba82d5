-- Policy decisions, a batch of them in one call: for each, whitelist check, sliding-window
-- check, and the count. The batch runs atomically, so each decision in it does too, in order:
-- two decisions for the same client in one batch see each other's counts.
--
-- Per decision d (1-based), three keys:
-- KEYS[3d-2]  the client's log: sorted set, one member per accepted message, score = time in µs,
--             and three bookkeeping members scored below zero (see "The log's running sums")
-- KEYS[3d-1]  the whitelist key of the client's exact address
-- KEYS[3d]    the offender hash of the client's exact address (refusals per hour)
-- Shared by the batch, first in ARGV (the limits, from the settings):
--   M, the number of message limits, then M pairs: count, window in µs
--   R, the number of recipient limits, then R pairs: count, window in µs
--   OFFENDER_THRESHOLD
-- then per decision, two: its mode, "count" (DATA: check and record), "check" (RCPT: message
-- limits only) or "usage" (read every limit's current use; no whitelist check, nothing
-- recorded), and the recipients in its message (a decimal integer, 0 to 1,000,000).
--
-- Returns one reply per decision, in order: 0 accepted (recorded in "count" mode), 1
-- whitelisted (the two replies nearly every decision gets: a bare integer, which Redis writes
-- and the daemon reads with no array around it), or on a refusal {code, index, used,
-- compromised}: code 2 message limit `index` reached, 3 recipient limit `index` reached; `used`
-- is what that limit had counted before this message; `compromised` is the client's refusals
-- this hour when this one brought them to exactly OFFENDER_THRESHOLD, else 0. "usage" replies
-- {4, used1, used2, ...}, message limits first.
--
-- Time comes from Redis (TIME, once per batch), not from the daemons, so several policy servers
-- on several hosts share one clock and the limit stays exact across them.

-- Lua 5.1 prints numbers with 14 significant digits; times in µs have 16, so every number that
-- becomes a string goes through %d.
local function int(x) return string.format('%d', x) end
-- Locals, not a global's field per call: redis.call runs about five times per decision.
local call, tonumber = redis.call, tonumber

local t = call('TIME')
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
  local count = call('HINCRBY', offender, 'h' .. hour, 1)
  local kind = (code == 2) and 'messages' or 'recipients'
  call('HSET', offender, 'limit', kind .. ' ' .. int(limit[1]) .. ' ' .. int(limit[2] / 1000000),
    'last', now_text)
  if count == 1 then
    -- A new hour: forget the hours that `top` no longer reads (at most one per hour).
    for _, field in ipairs(call('HKEYS', offender)) do
      local h = tonumber(string.match(field, '^h(%d+)$'))
      if h and h <= hour - OFFENDER_HOURS then call('HDEL', offender, field) end
    end
  end
  call('EXPIRE', offender, OFFENDER_HOURS * 3600)
  return {code, i, used, (count == threshold) and count or 0}
end

-- The log's running sums. A decision that counts needs, for each limit, what the client sent in
-- that window; summing the recipients member by member costs Redis one string per message in
-- the window on every decision. So the log also carries, as members scored below every entry
-- (entries are scored by time, > 0, so no window, no trim of stale entries and no read of the
-- entries reaches them):
--   '0:t'  scored -1 - the recipients of the entries in the log,
--   '0:c'  scored -1 - the number of those entries,
--   '0:e'  scored - the moment (µs) the log's TTL was last set to expire.
-- Their names read as entries of no recipients, so a reader that takes every member for an
-- entry (`show` of an earlier version, during a rolling upgrade) still parses them, and as
-- their times are below every window it counts none of them.
-- After stale entries are trimmed the log holds exactly the longest window, so a limit whose
-- window is the longest (the defaults' 100/1h and 1000/1h both are) reads its use from them;
-- a shorter window counts as before. Every decision that adds an entry keeps them exact in the
-- same atomic step, subtracting what the trim took. A log without all three (a new client, or
-- one an earlier version of this script trimmed: it drops everything below the window, these
-- too) has them rebuilt from its entries once.
--
-- '0:e' spares a PEXPIRE per message: the TTL is set to the longest window plus SLACK and only
-- renewed once a new entry would outlive it, so a busy client renews it once per SLACK.
local SLACK = math.min(longest, 60000000)  -- at most a minute's more life for an idle log

local function sums_of(log)
  local s = call('ZMSCORE', log, '0:t', '0:c', '0:e')
  local recipients, messages, expires = 0, 0, 0
  if s[1] and s[2] and s[3] then
    recipients, messages, expires = -1 - tonumber(s[1]), -1 - tonumber(s[2]), -tonumber(s[3])
    local stale = call('ZRANGE', log, '0', stale_before, 'BYSCORE')
    if #stale > 0 then
      -- Entries older than the longest window can never count again: drop them, so a client's
      -- log holds at most what its limits allow.
      call('ZREMRANGEBYSCORE', log, '0', stale_before)
      for _, member in ipairs(stale) do
        recipients = recipients - tonumber(string.match(member, '^(%d+)'))
      end
      messages = messages - #stale
      s.trimmed = true
    end
  else
    -- No sums (a new client, or a log an earlier version wrote): from the entries, once; one
    -- read serves the trim too. `expires` 0: the TTL is set as the entry is added.
    local entries = call('ZRANGE', log, '0', '+inf', 'BYSCORE', 'WITHSCORES')
    local cut, stale = now - longest, 0
    for k = 1, #entries, 2 do
      if tonumber(entries[k + 1]) < cut then
        stale = stale + 1
      else
        recipients = recipients + tonumber(string.match(entries[k], '^(%d+)'))
        messages = messages + 1
      end
    end
    if stale > 0 then call('ZREMRANGEBYSCORE', log, '0', stale_before) end
  end
  return s, recipients, messages, expires
end

-- What a window's entries add up to, member by member (a member is "recipients:time[:n]").
local function recipients_since(log, since)
  local used = 0
  for _, member in ipairs(call('ZRANGE', log, since, '+inf', 'BYSCORE')) do
    used = used + tonumber(string.match(member, '^(%d+)'))
  end
  return used
end

-- A refused DATA adds no entry; if its trim took entries, the sums must say so all the same.
local function refused_after_trim(log, offender, s, recipients, messages, code, i, used, limit)
  if s.trimmed then
    call('ZADD', log, int(-1 - recipients), '0:t', int(-1 - messages), '0:c')
  end
  return refused(offender, code, i, used, limit)
end

-- DATA: check every limit, then record the message and the sums in one ZADD.
local function count(log, offender, rcpts_text)
  local rcpts = tonumber(rcpts_text)
  local s, recipients, messages, expires = sums_of(log)
  for i = 1, m do
    local limit = message_limits[i]
    local used = messages
    if limit[2] ~= longest then used = call('ZCOUNT', log, limit[3], '+inf') end
    if used + 1 > limit[1] then
      return refused_after_trim(log, offender, s, recipients, messages, 2, i, used, limit)
    end
  end
  for j = 1, r do
    local limit = recipient_limits[j]
    local used = recipients
    if limit[2] ~= longest then used = recipients_since(log, limit[3]) end
    if used + rcpts > limit[1] then
      return refused_after_trim(log, offender, s, recipients, messages, 3, j, used, limit)
    end
  end
  -- Every number goes to Redis as integer text: the recipients as the daemon wrote them, the
  -- sums through int(). A Lua number, in a concatenation or as an argument, is written with
  -- '%.17g', some three times the instructions (`python -m benchmarks.redis_instructions`).
  local member = rcpts_text .. ':' .. now_text
  local total, entries = int(-1 - (recipients + rcpts)), int(-1 - (messages + 1))
  -- ZADD answers how many members are new: the entry, and any sum the log did not have yet.
  local new = 1
  if not s[1] then new = new + 1 end
  if not s[2] then new = new + 1 end
  local added
  if now + longest > expires then
    -- The log expires a little after its newest entry leaves the longest window.
    local expires_at = now + longest + SLACK
    if not s[3] then new = new + 1 end
    added = call('ZADD', log, now_text, member, total, '0:t', entries, '0:c',
      int(-expires_at), '0:e')
    call('PEXPIREAT', log, int(math.ceil(expires_at / 1000)))
  else
    added = call('ZADD', log, now_text, member, total, '0:t', entries, '0:c')
  end
  if added < new then
    -- The same recipients at the same µs (two messages of one batch): a distinct member.
    local n = 1
    while call('ZADD', log, 'NX', now_text, member .. ':' .. n) == 0 do n = n + 1 end
  end
  return 0
end

local function decide(log, grant, offender, mode, rcpts_text)
  if mode ~= 'usage' and call('EXISTS', grant) == 1 then
    return 1
  end
  if mode == 'count' then
    if longest == 0 then return 0 end  -- no limits: nothing to count against
    return count(log, offender, rcpts_text)
  end
  local usage = {4}
  for i = 1, m do
    local limit = message_limits[i]
    local used = call('ZCOUNT', log, limit[3], '+inf')
    if mode == 'usage' then
      usage[#usage + 1] = used
    elseif used >= limit[1] then
      return refused(offender, 2, i, used, limit)
    end
  end
  if mode == 'check' then
    return 0
  end
  for j = 1, r do
    usage[#usage + 1] = recipients_since(log, recipient_limits[j][3])
  end
  return usage
end

local replies = {}
for d = 1, #KEYS / 3 do
  local at = first_decision_arg + 2 * (d - 1)
  replies[d] = decide(KEYS[3 * d - 2], KEYS[3 * d - 1], KEYS[3 * d], ARGV[at], ARGV[at + 1])
end
return replies
