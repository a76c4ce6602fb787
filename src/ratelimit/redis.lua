-- One rate-limit check for one subject, atomic on the Redis server: the same GCRA and
-- calendar quotas as src/ratelimit/gcra.rs, charged all or nothing.
--
-- KEYS[i]  the state of policy i (all keys of one call share a hash tag, so one slot).
-- ARGV[1]  now, in microseconds since the Unix epoch.
-- then five arguments per policy, starting at ARGV[2 + 5 * (i - 1)]:
--   'r', cost * T, burst * T, T, 0        a rate; T is the emission interval (µs)
--   'q', cost, limit, window tag, ttl     a quota; ttl (ms) runs to the window's end
--
-- Times are microseconds so that every number stays below 2^53, where Lua's doubles
-- are exact. Numbers are written with '%.0f': tostring would round them to 14 digits.
--
-- Returns four integers per policy: allowed (1/0), remaining, reset (µs, rates only)
-- and retry-after (µs, rates only).

-- quota_used: see redis_quota.lua, prepended to this script.
local now = tonumber(ARGV[1])
local out = {}
local writes = {}
-- What each policy has left without this request: reported when another refuses it.
local uncharged = {}
local all = true

for i = 1, #KEYS do
  local a = 2 + 5 * (i - 1)
  local state = redis.call('GET', KEYS[i])
  if ARGV[a] == 'r' then
    local ct, tau, t = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local tat = now
    local stored = state and tonumber(state)
    if stored and stored > now then tat = stored end
    local new_tat = tat + ct
    local limit_at = now + tau
    uncharged[i] = { math.floor(math.max(0, limit_at - tat) / t), tat - now }
    if new_tat <= limit_at then
      out[#out + 1] = 1
      out[#out + 1] = math.floor((limit_at - new_tat) / t)
      out[#out + 1] = new_tat - now
      out[#out + 1] = 0
      writes[#writes + 1] = { KEYS[i], string.format('%.0f', new_tat),
        math.max(1, math.ceil((new_tat - now) / 1000)) }
    else
      all = false
      out[#out + 1] = 0
      out[#out + 1] = math.floor(math.max(0, limit_at - tat) / t)
      out[#out + 1] = tat - now
      out[#out + 1] = new_tat - limit_at
    end
  else
    local cost, limit, tag, ttl = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3],
      tonumber(ARGV[a + 4])
    local used, later = quota_used(state, tag)
    -- A later window: refused, reported as spent.
    if later then used = limit end
    uncharged[i] = { math.max(0, limit - used), 0 }
    if not later and used + cost <= limit then
      out[#out + 1] = 1
      out[#out + 1] = limit - used - cost
      writes[#writes + 1] = { KEYS[i], tag .. ':' .. string.format('%.0f', used + cost),
        math.max(1, ttl) }
    else
      all = false
      out[#out + 1] = 0
      out[#out + 1] = math.max(0, limit - used)
    end
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
end

if all then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], w[2], 'PX', string.format('%.0f', w[3]))
  end
else
  -- Nothing was charged: report what the allowing policies really have left.
  for i = 1, #KEYS do
    local o = 4 * (i - 1)
    if out[o + 1] == 1 then
      out[o + 2] = uncharged[i][1]
      out[o + 3] = uncharged[i][2]
    end
  end
end
return out
