-- KEYS: purge list, stream, purge set. Deletes up to 500 stream entries; returns how many ids are left.
local ids = redis.call('LRANGE', KEYS[1], 0, 499)
if #ids > 0 then
  redis.call('XDEL', KEYS[2], unpack(ids))
  redis.call('LTRIM', KEYS[1], #ids, -1)
end
local left = redis.call('LLEN', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[3], KEYS[1]) end
return left
