-- A token bucket in a Redis hash, refilled from Redis's own clock, taking up to `want`
-- tokens at once. KEYS[1]: the bucket. ARGV: rate (tokens/s), burst, want.
-- Returns {granted, whole tokens left, microseconds until one token is there (0 if any)}.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
  ts = now
end
tokens = math.min(tokens, burst)
local got = math.min(want, math.floor(tokens))
if got < 0 then got = 0 end
tokens = tokens - got
-- Numbers as text by hand: Lua's default conversion keeps only 14 digits.
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.0f', ts))
-- Gone once it would be full again anyway (plus a second).
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
local wait = 0
if tokens < 1 then
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
return {got, math.floor(tokens), wait}
