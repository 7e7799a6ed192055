-- broadcast.lua: record a revocation and tell every node about it.
--
-- KEYS[1] the revocation log, <prefix>revocations (a capped stream)
-- ARGV[1] the revocation, in its wire form (src/store/mod.rs, Revocation::encode)
-- ARGV[2] the log's approximate cap (entries)
-- ARGV[3] the pub/sub channel, <prefix>revoked
-- Returns the stream id of the entry. The message published is
-- "<stream id>|<wire form>", so subscribers can order it against the log.
-- (This script needs no record helpers; it is run on its own.)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'r', ARGV[1])
redis.call('PUBLISH', ARGV[3], id .. '|' .. ARGV[1])
return id
