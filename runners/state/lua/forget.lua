-- KEYS: fids, hist, gen, cache, rl, forgotten, purge set, purge list, stream. ARGV: keyed hash, maxlen.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('XADD', KEYS[9], 'MAXLEN', '~', ARGV[2], '*', 'f', ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[8])
  redis.call('SADD', KEYS[7], KEYS[8])
end
