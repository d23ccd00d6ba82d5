-- End a grant now, atomically with unlinking it from its user and the audit record.
--
-- KEYS[1] the grant key, KEYS[2] the audit stream
-- ARGV: ip, source, actor, audit max length, the prefix of user index keys
-- Returns the grant's JSON, or false when there was none.

local old = redis.call('GET', KEYS[1])
if not old then
  return false
end
local grant = cjson.decode(old)
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[5] .. grant['user'], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', 'remove', 'ip', ARGV[1],
           'user', grant['user'], 'role', grant['role'], 'status', grant['status'],
           'source', ARGV[2], 'actor', ARGV[3], 'expires_at', string.format('%d', grant['expires_at']))
return old
