-- A MEASURED PROTOTYPE, NOT SHIPPED: decide.lua's DATA decision ("count" mode only, every limit
-- as long as the longest window, as the defaults are) with the client's log as a LIST instead of
-- a sorted set, for `python -m benchmarks.lua_cost --warm 3 ratelimit/lua/decide.lua
-- benchmarks/variants/list_log.lua` (BENCHMARKS.md, issue 13, "What a decision's Redis work
-- grows with").
--
-- Why: a small sorted set is a listpack, and ZADD of a new member scans every member of it to
-- learn whether the member is new, then walks the scores to its place; so a decision costs Redis
-- more the more messages the client's window holds. A list's RPUSH and LSET of its first element
-- cost the same at any length, and its entries arrive in time order (Redis' TIME), so the stale
-- ones are always at its head.
--
-- Element 1: "recipients:messages:expires_us" (the running sums); then one element per accepted
-- message, "rcpts:time_us", oldest first. Same answers as decide.lua for this mode; same KEYS and
-- ARGV.
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

local function count(log, offender, rcpts)
  local head = redis.call('LRANGE', log, 0, 1)
  local recipients, messages, expires = 0, 0, 0
  local fresh = head[1] ~= nil
  if fresh then
    local a, b, c = string.match(head[1], '^(%d+):(%d+):(%d+)$')
    recipients, messages, expires = tonumber(a), tonumber(b), tonumber(c)
    local oldest = head[2]
    if oldest and tonumber(string.match(oldest, ':(%d+)$')) < cut then
      local k = 0
      for _, e in ipairs(redis.call('LRANGE', log, 1, -1)) do
        local n, at = string.match(e, '^(%d+):(%d+)$')
        if tonumber(at) >= cut then break end
        k = k + 1
        recipients, messages = recipients - tonumber(n), messages - 1
      end
      redis.call('LPOP', log, k + 1)
      redis.call('LPUSH', log, '')
    end
  end
  for i = 1, m do
    if messages + 1 > message_limits[i][1] then return {2, i, messages, 0} end
  end
  for j = 1, r do
    if recipients + rcpts > recipient_limits[j][1] then return {3, j, recipients, 0} end
  end
  local renew = now + longest > expires
  if renew then expires = now + longest + SLACK end
  if fresh then
    redis.call('RPUSH', log, rcpts .. ':' .. now_text)
    redis.call('LSET', log, 0, (recipients + rcpts) .. ':' .. (messages + 1) .. ':' .. int(expires))
  else
    redis.call('RPUSH', log, (recipients + rcpts) .. ':' .. (messages + 1) .. ':' .. int(expires),
      rcpts .. ':' .. now_text)
  end
  if renew then redis.call('PEXPIREAT', log, int(math.ceil(expires / 1000))) end
  return 0
end

local replies = {}
for d = 1, #KEYS / 3 do
  local at = first_decision_arg + 2 * (d - 1)
  if redis.call('EXISTS', KEYS[3 * d - 1]) == 1 then
    replies[d] = 1
  else
    replies[d] = count(KEYS[3 * d - 2], KEYS[3 * d], tonumber(ARGV[at + 1]))
  end
end
return replies
