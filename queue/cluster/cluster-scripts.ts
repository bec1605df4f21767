/*
 * The Lua scripts that make each shared step atomic in Redis. Every script touches the keys of one
 * site only (their names carry the site's hash tag) or one rate key, so they run on Redis Cluster
 * too, and every script reads the time from Redis itself (TIME), so the nodes' clocks never matter.
 *
 * Leases, per site (cluster-leases.ts):
 *   KEYS[1] held    hash  "source|tenant|node" → leases held
 *   KEYS[2] alive   zset  node → until when its leases at this site stand (ms)
 *   KEYS[3] want    hash  "source|tenant" → until when that tenant is waiting for a lease (ms)
 *   KEYS[4] weight  hash  tenant → its weight
 *   KEYS[5] extra   hash  tenant → when it last got a lease above its share (ms)
 * A node that stops renewing its `alive` entry loses its leases at the next step anyone takes there.
 * A tenant's fair share of a pair's cap is cap × weight ÷ the weights of the tenants holding or
 * waiting there, rounded down (zero when there are more tenants than the cap). A lease above its
 * share is granted only while no waiting tenant is below its own, and then to the waiting tenant
 * that had one longest ago; while another tenant waits, a tenant keeps no more than its share, so
 * the leases the rounding leaves over pass from tenant to tenant, one delivery each. Leases above
 * the cap (a node that stalled past its lease time and came back) are taken back from the node
 * that says it holds them.
 *
 * Rates (cluster-gate.ts): GCRA on one key, taking up to n messages at once.
 */

/** Shared by the lease scripts: the time, the purge of dead nodes, and the tallies of one source. */
const LEASE_PRELUDE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node, source, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  local gone = {}
  for _, n in ipairs(dead) do gone[n] = true end
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local n = string.match(all[i], '^[^|]*|[^|]*|(.*)$')
    if gone[n] then redis.call('HDEL', KEYS[1], all[i]) end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
redis.call('ZADD', KEYS[2], now + ttl, node)
redis.call('PEXPIRE', KEYS[2], ttl * 3)
local total, byTenant, mineByTenant, nodeCounts = 0, {}, {}, {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local src, ten, n = string.match(all[i], '^([^|]*)|([^|]*)|(.*)$')
  if src == source then
    local c = tonumber(all[i + 1])
    total = total + c
    byTenant[ten] = (byTenant[ten] or 0) + c
    nodeCounts[ten] = nodeCounts[ten] or {}
    nodeCounts[ten][n] = c
    if n == node then mineByTenant[ten] = c end
  end
end
-- This node's leases for a tenant are now \`c\` (what it holds, as it says).
local function setMine(ten, c)
  local before = mineByTenant[ten] or 0
  total = total - before + c
  byTenant[ten] = (byTenant[ten] or 0) - before + c
  mineByTenant[ten] = c
  nodeCounts[ten] = nodeCounts[ten] or {}
  nodeCounts[ten][node] = c
end
local waiting = {}
local wants = redis.call('HGETALL', KEYS[3])
for i = 1, #wants, 2 do
  local src, ten = string.match(wants[i], '^([^|]*)|(.*)$')
  if tonumber(wants[i + 1]) < now then redis.call('HDEL', KEYS[3], wants[i])
  elseif src == source then waiting[ten] = true end
end
local weights = {}
local w = redis.call('HGETALL', KEYS[4])
for i = 1, #w, 2 do weights[w[i]] = tonumber(w[i + 1]) end
local function weightOf(ten) return weights[ten] or 1 end
local function shares(cap)
  local present, sum = {}, 0
  for ten, c in pairs(byTenant) do if c > 0 then present[ten] = true end end
  for ten, _ in pairs(waiting) do present[ten] = true end
  for ten, _ in pairs(present) do sum = sum + weightOf(ten) end
  local share = {}
  for ten, _ in pairs(present) do share[ten] = math.floor(cap * weightOf(ten) / sum + 1e-9) end
  return share
end
local function starving(share, except)
  for ten, _ in pairs(waiting) do
    if ten ~= except and (byTenant[ten] or 0) < (share[ten] or 0) then return true end
  end
  return false
end
local function contended(except)
  for ten, _ in pairs(waiting) do if ten ~= except then return true end end
  return false
end
-- How many of its leases for the tenant this node keeps: -1 (no limit) unless another tenant waits;
-- else what brings the tenant down to its share, taken first from the nodes that hold the most.
local function shareKeep(ten, share)
  local mine = mineByTenant[ten] or 0
  if not contended(ten) then return -1 end
  local excess = (byTenant[ten] or 0) - share
  if excess <= 0 then return mine end
  local list = {}
  for n, c in pairs(nodeCounts[ten] or {}) do list[#list + 1] = { n, c } end
  table.sort(list, function(x, y) if x[2] ~= y[2] then return x[2] > y[2] end return x[1] < y[1] end)
  for _, e in ipairs(list) do
    local cut = math.min(e[2], excess)
    if e[1] == node then return e[2] - cut end
    excess = excess - cut
    if excess <= 0 then break end
  end
  return mine
end
-- The same, and never above the cap: a node told to hold more than the cap leaves sheds the excess.
local function keepFor(ten, share, cap)
  local keep = shareKeep(ten, share)
  if total <= cap then return keep end
  local mine = mineByTenant[ten] or 0
  local most = math.max(0, mine - (total - cap))
  if keep < 0 or keep > most then return most end
  return keep
end
`;

/**
 * ARGV: node, source, ttl, tenant, weight, cap, wantTtl, leases the node holds for the tenant now
 * (what Redis has of it is replaced by that), and "1" on the node's first question at the pair
 * since it started: then its other fields there are dropped, so a restarted node leaves nothing
 * stale (its first question goes out before any other of its own at the pair is answered).
 * Asks for one lease for the tenant.
 * Returns { granted (0/1), leases of the pair cluster-wide, the tenant's fair share, how many of its
 * leases for the tenant this node may keep (while another tenant waits; -1: no limit) }.
 */
export const ACQUIRE = `${LEASE_PRELUDE}
local tenant, weight, cap, wantTtl, holds = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local field = source .. '|' .. tenant .. '|' .. node
if ARGV[9] == '1' then
  for ten, _ in pairs(mineByTenant) do
    if ten ~= tenant then
      redis.call('HDEL', KEYS[1], source .. '|' .. ten .. '|' .. node)
      setMine(ten, 0)
    end
  end
end
if holds > 0 then redis.call('HSET', KEYS[1], field, holds) else redis.call('HDEL', KEYS[1], field) end
setMine(tenant, holds)
redis.call('HSET', KEYS[4], tenant, weight)
weights[tenant] = tonumber(weight)
redis.call('PEXPIRE', KEYS[4], 86400000)
redis.call('HSET', KEYS[3], source .. '|' .. tenant, now + wantTtl)
redis.call('PEXPIRE', KEYS[3], wantTtl * 4)
waiting[tenant] = true
local share = shares(cap)
local have = byTenant[tenant] or 0
local granted = 0
if total < cap then
  if have < share[tenant] then
    granted = 1
  elseif not starving(share, tenant) then
    -- Above its share: the waiting tenant that had a lease above its share longest ago goes first.
    local mine = tonumber(redis.call('HGET', KEYS[5], tenant) or '0')
    local first = true
    for ten, _ in pairs(waiting) do
      if ten ~= tenant and tonumber(redis.call('HGET', KEYS[5], ten) or '0') < mine then first = false end
    end
    if first then
      granted = 1
      redis.call('HSET', KEYS[5], tenant, now)
      redis.call('PEXPIRE', KEYS[5], 86400000)
    end
  end
end
if granted == 1 then
  redis.call('HSET', KEYS[1], field, holds + 1)
  redis.call('PEXPIRE', KEYS[1], ttl * 3)
  setMine(tenant, holds + 1)
end
return { granted, total, share[tenant], keepFor(tenant, share[tenant], cap) }
`;

/**
 * ARGV: node, source, ttl, then triples (tenant, leases this node holds, cap). Sets this node's
 * leases at the pair to what it holds (renewal, release, and the re-assertion after Redis came
 * back); this node's leases at the pair for tenants not named are dropped.
 * Returns, per tenant, how many of its leases this node may keep: while another tenant waits, what
 * brings the tenant down to its fair share (cut first where it holds most), else what it holds.
 */
export const ASSERT = `${LEASE_PRELUDE}
local out = {}
local named = {}
for i = 4, #ARGV, 3 do named[ARGV[i]] = true end
for ten, _ in pairs(mineByTenant) do
  if not named[ten] then
    redis.call('HDEL', KEYS[1], source .. '|' .. ten .. '|' .. node)
    setMine(ten, 0)
  end
end
for i = 4, #ARGV, 3 do
  local tenant, held = ARGV[i], tonumber(ARGV[i + 1])
  local field = source .. '|' .. tenant .. '|' .. node
  if held > 0 then redis.call('HSET', KEYS[1], field, held) else redis.call('HDEL', KEYS[1], field) end
  setMine(tenant, held)
end
local share = nil
for i = 4, #ARGV, 3 do
  local tenant, held, cap = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  share = share or shares(cap)
  local keep = keepFor(tenant, share[tenant] or 0, cap)
  if keep < 0 then out[#out + 1] = held else out[#out + 1] = math.min(held, keep) end
end
redis.call('PEXPIRE', KEYS[1], ttl * 3)
return out
`;

/**
 * KEYS[1] the rate's key. ARGV: emission interval (ms per message), burst (ms), n wanted.
 * Returns { granted (0..n), ms until the next message may go when none was granted }.
 */
export const GCRA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval, burst, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local k = math.floor((now + burst - tat) / interval)
if k > n then k = n end
if k < 1 then return { 0, math.ceil(tat + interval - burst - now) } end
tat = tat + k * interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + burst) + 1000)
return { k, 0 }
`;
