-- Shared by redis.lua and redis_batch.lua (prepended to each when the store loads them).

-- A quota's count in the window `tag` (such as d20780) from its stored `tag:count`, and
-- whether the stored window is a later one (a call from an earlier window, with a clock
-- behind or late, must not write over it).
local function quota_used(state, tag)
  if not state then return 0, false end
  local sep = string.find(state, ':', 1, true)
  if not sep then return 0, false end
  local stored = string.sub(state, 1, sep - 1)
  if stored == tag then return tonumber(string.sub(state, sep + 1)) or 0, false end
  local later = string.sub(stored, 1, 1) == string.sub(tag, 1, 1)
    and (tonumber(string.sub(stored, 2)) or 0) > (tonumber(string.sub(tag, 2)) or 0)
  return 0, later
end
