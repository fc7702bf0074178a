-- KEYS: the buckets. ARGV: rate, burst, now ('' = Redis's clock), then one cost per bucket. All or nothing.
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local tokens, stamps, wait = {}, {}, 0
for i, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'tokens', 'ts')
  local t, ts = tonumber(s[1]) or burst, tonumber(s[2]) or now
  if now > ts then t = math.min(burst, t + (now - ts) * rate); ts = now end
  tokens[i], stamps[i] = t, ts
  wait = math.max(wait, (tonumber(ARGV[3 + i]) - t) / rate)
end
for i, key in ipairs(KEYS) do
  local t = tokens[i]
  if wait <= 0 then t = t - tonumber(ARGV[3 + i]) end
  redis.call('HSET', key, 'tokens', string.format('%.17g', t), 'ts', string.format('%.17g', stamps[i]))
  redis.call('PEXPIRE', key, math.ceil((burst - t) / rate * 1000) + 1)
end
return string.format('%.17g', math.max(wait, 0))
