-- Hold a place for an address in a user's grant index, atomically with the per-user cap, before
-- grant.lua makes the grant itself. Refreshing an address the user already holds is always
-- allowed; a new one must fit under the cap.
--
-- KEYS[1] the user's grant index (sorted set: address -> expiry ms)
-- ARGV: ip, ttl (s), cap (0 = none), "1" when the user holds the address' grant now (an
--       operator's override for them, which their index does not list)
-- Returns {1, held} when the place is held (the index now lists ip), {-1, held} over the cap.

local function int(x) return string.format('%d', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ip, ttl, cap = ARGV[1], tonumber(ARGV[2]) * 1000, tonumber(ARGV[3])

-- The index may list grants that have since expired; they no longer count against the cap.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local held = redis.call('ZCARD', KEYS[1])
if ARGV[4] ~= '1' and not redis.call('ZSCORE', KEYS[1], ip) and cap > 0 and held >= cap then
  return {-1, held}
end
redis.call('ZADD', KEYS[1], int(now + ttl), ip)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], int(ttl))
end
return {1, held}
