-- A MEASURED PROTOTYPE, NOT SHIPPED: decide.lua's DATA decision ("count" mode only, every limit
-- as long as the longest window, as the defaults are) with the client's log in two keys: its
-- running sums in a string, its entries in a list. For `python -m benchmarks.redis_instructions`
-- and `benchmarks.lua_cost` (BENCHMARKS.md, issue 13, "Instructions inside Redis").
--
-- Why: decide.lua makes four calls per decision (EXISTS, ZMSCORE, ZRANGE of the stale entries,
-- ZADD of the entry and two sums) and every sum read or written is a double that Redis formats
-- or parses. Here it is three calls, none with a double: MGET of the grant and the sums,
-- RPUSH of the entry, SET of the sums with the TTL; the stale entries are read only when the
-- oldest one (kept in the sums) has left the window.
--
-- The sums key is the log's name with ':s' (same hash tag, so the same slot on a cluster; a
-- shipped version would pass it in KEYS): "recipients:messages:expires_us:oldest_us". The list
-- holds "rcpts:time_us" per accepted message, oldest first. Same answers as decide.lua for this
-- mode (tests/test_log_prototypes.py); same KEYS and ARGV.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function int(x) return string.format('%d', x) end
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
local first_decision_arg = 2 * m + 2 * r + 4
local now_text = int(now)
local cut = now - longest
local SLACK = math.min(longest, 60000000)
local expire_ms = int(math.ceil((now + longest + SLACK) / 1000))

local function count(log, sums_key, sums, rcpts_text)
  local rcpts = tonumber(rcpts_text)
  local recipients, messages, expires, oldest = 0, 0, 0, now
  if sums then
    local a, b, c, d = string.match(sums, '^(%d+):(%d+):(%d+):(%d+)$')
    recipients, messages, expires, oldest = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    if oldest < cut then
      local k, first = 0, nil
      while true do
        local chunk = redis.call('LRANGE', log, k, k + 15)
        if #chunk == 0 then break end
        for _, e in ipairs(chunk) do
          local n, at = string.match(e, '^(%d+):(%d+)')
          at = tonumber(at)
          if at >= cut then first = at break end
          k = k + 1
          recipients, messages = recipients - tonumber(n), messages - 1
        end
        if first then break end
      end
      if k > 0 then redis.call('LTRIM', log, k, -1) end
      oldest = first or now
    end
  end
  for i = 1, m do
    if messages + 1 > message_limits[i][1] then return {2, i, messages, 0} end
  end
  for j = 1, r do
    if recipients + rcpts > recipient_limits[j][1] then return {3, j, recipients, 0} end
  end
  redis.call('RPUSH', log, rcpts_text .. ':' .. now_text)
  if now + longest > expires then
    expires = now + longest + SLACK
    redis.call('PEXPIREAT', log, expire_ms)
  end
  redis.call('SET', sums_key, int(recipients + rcpts) .. ':' .. int(messages + 1) .. ':' .. int(expires) .. ':' .. int(math.min(oldest, now)), 'PXAT', expire_ms)
  return 0
end

local replies = {}
for d = 1, #KEYS / 3 do
  local at = first_decision_arg + 2 * (d - 1)
  local log = KEYS[3 * d - 2]
  local sums_key = log .. ':s'
  local got = redis.call('MGET', KEYS[3 * d - 1], sums_key)
  if got[1] then
    replies[d] = 1
  else
    replies[d] = count(log, sums_key, got[2] or nil, ARGV[at + 1])
  end
end
return replies
