-- End a grant now, atomically with its audit record. The caller then unlinks the address from
-- its user's index (in the user's own slot).
--
-- KEYS[1] the grant key, KEYS[2] the audit stream of its network
-- ARGV: ip, source, actor, audit max length
-- Returns the grant's JSON, or false when there was none.

local old = redis.call('GET', KEYS[1])
if not old then
  return false
end
local grant = cjson.decode(old)
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', 'remove', 'ip', ARGV[1],
           'user', grant['user'], 'role', grant['role'], 'status', grant['status'],
           'source', ARGV[2], 'actor', ARGV[3], 'expires_at', string.format('%d', grant['expires_at']))
return old
