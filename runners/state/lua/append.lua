-- KEYS: stream, fids:<user>, trendlog:<hl>. ARGV: maxlen, event JSON, item, log2 contribution.
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('RPUSH', KEYS[2], id)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[1]), -1)
local x = tonumber(ARGV[4])
local cur = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[3]))
if cur then
  local hi, lo = math.max(cur, x), math.min(cur, x)
  x = hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
end
redis.call('ZADD', KEYS[3], string.format('%.17g', x), ARGV[3])
return id
