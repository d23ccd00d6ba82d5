-- Clear a client's counts (after a false positive or a cleaned PC), atomically with the audit
-- record, as a removal is recorded.
--
-- KEYS[1] the client's log (its network's sorted set), KEYS[2] the offender hash of the exact
-- address, KEYS[3] the audit stream
-- ARGV: ip, source, actor, audit max length
-- Returns the number of keys deleted (0: there were no counts, nothing is recorded).

local deleted = redis.call('DEL', KEYS[1], KEYS[2])
if deleted > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', 'reset', 'ip', ARGV[1],
             'source', ARGV[2], 'actor', ARGV[3])
end
return deleted
