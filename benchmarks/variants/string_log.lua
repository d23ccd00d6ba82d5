-- A MEASURED PROTOTYPE, NOT SHIPPED, and a warning: decide.lua's DATA decision ("count" mode
-- only, every limit as long as the longest window) with the client's whole log in one string,
-- read with the grant in one MGET and written back with one SET: two calls per decision, the
-- fewest possible. For `python -m benchmarks.redis_instructions` (BENCHMARKS.md, issue 13,
-- "Instructions inside Redis").
--
-- It is the cheapest decision measured while a client's log is short, and the dearest once it is
-- long: every decision copies the whole log, out of Redis, into Lua and back (twelve bytes a
-- message, struct-packed), so its cost grows with the window's length.
--
-- Layout: '<I4d' header (recipients in the log; a spare double), then one '<dI4' entry per
-- accepted message (time µs, recipients), oldest first. Same answers as decide.lua for this mode
-- (tests/test_log_prototypes.py); same KEYS and ARGV.
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
local first_decision_arg = 2 * m + 2 * r + 4
local cut = now - longest
local expire_ms = string.format('%d', math.ceil((now + longest) / 1000))
local pack, unpack, sub = struct.pack, struct.unpack, string.sub
local HEADER = 12   -- '<I4d': recipients in the log, time of the oldest entry (unused here)
local ENTRY = 12    -- '<dI4': time µs, recipients

local function count(log, v, rcpts)
  local recipients, messages, start = 0, 0, HEADER + 1
  if v then
    recipients = unpack('<I4', v)
    local len = #v
    messages = (len - HEADER) / ENTRY
    while start <= len do
      local at, n = unpack('<dI4', v, start)
      if at >= cut then break end
      recipients, messages, start = recipients - n, messages - 1, start + ENTRY
    end
  end
  for i = 1, m do
    if messages + 1 > message_limits[i][1] then return {2, i, messages, 0} end
  end
  for j = 1, r do
    if recipients + rcpts > recipient_limits[j][1] then return {3, j, recipients, 0} end
  end
  local body = v and sub(v, start) or ''
  redis.call('SET', log, pack('<I4d', recipients + rcpts, 0) .. body .. pack('<dI4', now, rcpts), 'PXAT', expire_ms)
  return 0
end

local replies = {}
for d = 1, #KEYS / 3 do
  local at = first_decision_arg + 2 * (d - 1)
  local log = KEYS[3 * d - 2]
  local got = redis.call('MGET', KEYS[3 * d - 1], log)
  if got[1] then
    replies[d] = 1
  else
    replies[d] = count(log, got[2] or nil, tonumber(ARGV[at + 1]))
  end
end
return replies
