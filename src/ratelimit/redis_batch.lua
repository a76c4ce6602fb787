-- Takes a slice of one subject's budget for one instance, atomic on the Redis server: the
-- same GCRA and calendar quotas as redis.lua, charged all or nothing, but each policy may
-- grant more than the request's cost, for the instance to spend locally.
--
-- KEYS[i]  the state of policy i (all keys of one call share a hash tag, so one slot).
-- ARGV[1]  now, in microseconds since the Unix epoch.
-- ARGV[2]  the share: a policy grants at most 1/share of what it has left beyond the cost.
-- then eight arguments per policy (its kind and seven), starting at ARGV[3 + 8 * (i - 1)]:
--   'r', cost, cost * T, burst * T, T, cap, back_end, back_tat
--       a rate; T is the emission interval (µs). back_end/back_tat: the end of this
--       instance's unspent segment and its own arrival time in it, given back when no
--       other instance took budget after it (0 0: nothing to give back).
--   'q', cost, limit, window tag, ttl, cap, back, 0
--       a quota; ttl (ms) runs to the window's end; back: unspent requests of this
--       window, given back.
--
-- A policy grants cost + extra, extra = min(cap, floor((left - cost) / share)), where left
-- is what the policy has at `now`; cost 0 asks for a slice only.
--
-- Returns seven integers per policy: allowed (1/0), remaining, reset (µs, rates), retry
-- (µs, rates), start (µs: the rate's arrival time the slice starts at), granted, and
-- whether what was given back was taken (1/0; a quota's always is).
-- When every policy allowed, remaining counts the granted extra as still remaining (as
-- the instance will spend it); otherwise nothing was written, given back or granted, and
-- remaining is what each policy has without this request.

-- quota_used: see redis_quota.lua, prepended to this script.
local now = tonumber(ARGV[1])
local share = tonumber(ARGV[2])
local out = {}
local writes = {}
-- What each policy has without this request (remaining, reset): reported when another
-- policy refuses it.
local uncharged = {}
local all = true

for i = 1, #KEYS do
  local a = 3 + 8 * (i - 1)
  local state = redis.call('GET', KEYS[i])
  local cost, cap = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 5])
  if ARGV[a] == 'r' then
    local ct, tau, t = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
    local back_end, back_tat = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
    local stored = (state and tonumber(state)) or 0
    local tat = math.max(stored, now)
    local taken = 0
    if back_end > 0 and stored == back_end and stored > now then
      tat = math.max(back_tat, now)
      taken = 1
    end
    local new_tat = tat + ct
    local limit_at = now + tau
    uncharged[i] = { math.floor(math.max(0, limit_at - tat) / t), tat - now }
    if new_tat <= limit_at then
      local extra = math.min(cap, math.floor(math.floor((limit_at - new_tat) / t) / share))
      local grant_end = new_tat + extra * t
      out[#out + 1] = 1
      out[#out + 1] = math.floor((limit_at - new_tat) / t)
      out[#out + 1] = new_tat - now
      out[#out + 1] = 0
      out[#out + 1] = tat
      out[#out + 1] = cost + extra
      out[#out + 1] = taken
      writes[#writes + 1] = { KEYS[i], string.format('%.0f', grant_end),
        math.max(1, math.ceil((grant_end - now) / 1000)) }
    else
      all = false
      out[#out + 1] = 0
      out[#out + 1] = math.floor(math.max(0, limit_at - tat) / t)
      out[#out + 1] = tat - now
      out[#out + 1] = new_tat - limit_at
      out[#out + 1] = tat
      out[#out + 1] = 0
      out[#out + 1] = taken
    end
  else
    local limit, tag, ttl = tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4])
    local back = tonumber(ARGV[a + 6])
    local used, later = quota_used(state, tag)
    -- A later window: refused, reported as spent.
    if later then used = limit end
    if not later then used = math.max(0, used - back) end
    uncharged[i] = { math.max(0, limit - used), 0 }
    if not later and used + cost <= limit then
      local extra = math.min(cap, math.floor((limit - used - cost) / share))
      out[#out + 1] = 1
      out[#out + 1] = limit - used - cost
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = cost + extra
      out[#out + 1] = 1
      writes[#writes + 1] = { KEYS[i], tag .. ':' .. string.format('%.0f', used + cost + extra),
        math.max(1, ttl) }
    else
      all = false
      out[#out + 1] = 0
      out[#out + 1] = math.max(0, limit - used)
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 0
      out[#out + 1] = 1
    end
  end
end

if all then
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], w[2], 'PX', string.format('%.0f', w[3]))
  end
else
  -- Nothing is charged: the allowing policies report what they have without this request.
  for i = 1, #KEYS do
    local o = 7 * (i - 1)
    if out[o + 1] == 1 then
      out[o + 2] = uncharged[i][1]
      out[o + 3] = uncharged[i][2]
      out[o + 6] = 0
    end
  end
end
return out
