-- A FLOOR, NOT A DECISION: the four calls decide.lua makes for a DATA decision on a client with
-- sums (EXISTS of the grant, ZMSCORE of the sums, ZRANGE of the stale entries, ZADD of the entry
-- and two sums), with the same arguments' shapes but no logic around them and no answer worth
-- reading. `python -m benchmarks.redis_instructions ratelimit/lua/decide.lua
-- benchmarks/variants/calls_only.lua` shows what of decide.lua's cost is the calls themselves
-- (BENCHMARKS.md, issue 13, "Instructions inside Redis").
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_text = string.format('%d', now)
local stale_before = '(' .. string.format('%d', now - 3600000000)
local r = {}
for d = 1, #KEYS / 3 do
  local log = KEYS[3 * d - 2]
  redis.call('EXISTS', KEYS[3 * d - 1])
  local s = redis.call('ZMSCORE', log, '0:t', '0:c', '0:e')
  redis.call('ZRANGE', log, '0', stale_before, 'BYSCORE')
  redis.call('ZADD', log, now_text, '1:' .. now_text .. ':' .. d, -1 - d, '0:t', -2 - d, '0:c')
  r[d] = 0
end
return r
