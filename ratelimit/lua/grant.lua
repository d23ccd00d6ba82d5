-- Grant (or refresh) an address, atomically with its audit record. The per-user cap was checked
-- just before by claim.lua, in the user's own slot (on a Redis Cluster a user's grants span
-- many slots, so the cap cannot be checked in this one); an operator's override skips it, and
-- is not indexed under the user, so it does not count against the user's cap.
--
-- KEYS[1] the grant key of the address, KEYS[2] the audit stream of its network
-- ARGV: ip, user, role, status, source, ttl (s), audit max length,
--       actor (who made the change when not the user; may be empty)
-- Returns {1 new | 0 refreshed, expires_at ms, now ms, previous holder or ""}: the caller
-- unlinks the address from the previous holder's index.

local function int(x) return string.format('%d', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ip, user, role, status, source = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl = tonumber(ARGV[6]) * 1000

local old = redis.call('GET', KEYS[1])
local holder = ''
if old then holder = cjson.decode(old)['user'] end

local expires = now + ttl
local value = cjson.encode({user = user, role = role, status = status, source = source,
                            granted_at = now, expires_at = expires})
redis.call('SET', KEYS[1], value, 'PX', int(ttl))

local created = (holder ~= user) and 1 or 0
local event = (created == 1) and 'grant' or 'refresh'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'event', event, 'ip', ip,
           'user', user, 'role', role, 'status', status, 'source', source,
           'actor', ARGV[8], 'expires_at', int(expires))
return {created, expires, now, holder}
