-- Grant (or refresh) an address, atomically with the per-user cap and the audit record.
--
-- KEYS[1] the grant key of the address, KEYS[2] the user's grant index, KEYS[3] the audit stream
-- ARGV: ip, user, role, status, source, ttl (s), cap (0 = none: an operator's override, which
--       is not indexed under the user, so it does not count against the user's cap), audit max
--       length, the prefix of user index keys (to unlink the address from a previous holder),
--       actor (who made the change when not the user; may be empty)
-- Returns {1 new | 0 refreshed, expires_at ms, now ms}, or {-1, grants held} over the cap.

local function int(x) return string.format('%d', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ip, user, role, status, source = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl = tonumber(ARGV[6]) * 1000
local cap = tonumber(ARGV[7])

-- The index may list grants that have since expired; they no longer count against the cap.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now))

local old = redis.call('GET', KEYS[1])
local holder = nil
if old then holder = cjson.decode(old)['user'] end

if holder ~= user then
  -- Refreshing one's own grant is always allowed; a new one must fit under the cap.
  local held = redis.call('ZCARD', KEYS[2])
  if cap > 0 and held >= cap then
    return {-1, held}
  end
end
if holder and (holder ~= user or cap == 0) then
  -- The address leaves the previous holder's count (an override never counts).
  redis.call('ZREM', ARGV[9] .. holder, ip)
end

local expires = now + ttl
local value = cjson.encode({user = user, role = role, status = status, source = source,
                            granted_at = now, expires_at = expires})
redis.call('SET', KEYS[1], value, 'PX', int(ttl))
if cap > 0 then
  redis.call('ZADD', KEYS[2], int(expires), ip)
  if redis.call('PTTL', KEYS[2]) < ttl then
    redis.call('PEXPIRE', KEYS[2], int(ttl))
  end
end

local created = (holder ~= user) and 1 or 0
local event = (created == 1) and 'grant' or 'refresh'
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'event', event, 'ip', ip,
           'user', user, 'role', role, 'status', status, 'source', source,
           'actor', ARGV[10], 'expires_at', int(expires))
return {created, expires, now}
