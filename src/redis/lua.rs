//! The Lua scripts: every step that must be atomic across nodes runs in one of them.
//!
//! Each script touches only the keys it is given as `KEYS`, and these always share one hash
//! tag (see `keys.rs`), so every script runs on Redis Cluster as on a single server. The
//! command that publishes a message (`PUBLISH`, or `SPUBLISH` for Redis Cluster's sharded
//! pub/sub, whose channels hash like keys) is built into the scripts by [`Scripts::new`].

use redis::Script;

/// Messages of history read per call when catching up: 64 messages of at most a few KiB
/// each keep every reply small, however long the history.
pub(super) const PAGE: usize = 64;

/// The scripts of one backend, built for its publish command.
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) state: Script,
    pub(super) touch: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) members: Script,
    pub(super) evict: Script,
    pub(super) register: Script,
    pub(super) heartbeat: Script,
    pub(super) dead: Script,
    pub(super) forget: Script,
}

impl Scripts {
    /// `sharded`: publish with `SPUBLISH` (Redis Cluster) instead of `PUBLISH`.
    pub(super) fn new(sharded: bool) -> Self {
        let command = if sharded { "SPUBLISH" } else { "PUBLISH" };
        let publish_fn = PUBLISH_FN.replace("PUBLISH_COMMAND", command);
        let with = |body: &str| Script::new(&format!("{publish_fn}\n{TOTAL_FN}\n{body}"));
        Self {
            publish: with(PUBLISH),
            state: Script::new(STATE),
            touch: Script::new(TOUCH),
            join: with(JOIN),
            leave: with(LEAVE),
            members: Script::new(MEMBERS),
            evict: with(EVICT),
            register: with(REGISTER),
            heartbeat: Script::new(&format!("{NOW}\n{HEARTBEAT}")),
            dead: Script::new(&format!("{NOW}\n{DEAD}")),
            forget: Script::new(&format!("{NOW}\n{FORGET}")),
        }
    }
}

/// `publish(meta, hist, candidate epoch, body, maxlen, ttl ms, channel)`: assigns the next id,
/// appends to the history, publishes; returns the id. A new epoch starts an empty history.
const PUBLISH_FN: &str = r"
local function publish(meta, hist, cand, body, maxlen, ttl, channel)
  if redis.call('HSETNX', meta, 'epoch', cand) == 1 then
    redis.call('DEL', hist)
  end
  local e = redis.call('HGET', meta, 'epoch')
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local id = e .. '-' .. seq
  local wire = id .. ' ' .. body
  redis.call('XADD', hist, 'MAXLEN', '~', maxlen, '0-' .. seq, 'm', wire)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', hist, ttl)
  redis.call('PUBLISH_COMMAND', channel, wire)
  return id
end
";

/// `total(pn, pc, user, except)`: the user's connections in a room over the nodes that have
/// members there, leaving out node `except` (or none if it is `''`).
const TOTAL_FN: &str = r"
local function total(pn, pc, user, except)
  local t = 0
  for _, nd in ipairs(redis.call('HKEYS', pn)) do
    if nd ~= except then
      t = t + tonumber(redis.call('HGET', pc, nd .. '|' .. user) or '0')
    end
  end
  return t
end
";

/// `now`: the Redis clock in Unix milliseconds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS meta, hist; ARGV candidate epoch, body, maxlen, ttl, channel, deadline (Unix ms).
///
/// A publish that reaches Redis after its deadline (Redis was stalled and the node's call has
/// already timed out and reported the failure) does nothing and answers `EXPIRED`: a publish
/// reported as failed is never delivered later.
const PUBLISH: &str = r"
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[6]) then
  return redis.error_reply('EXPIRED publish past its deadline')
end
return publish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])";

/// KEYS meta, hist; ARGV candidate epoch, local epoch, local last offset, stamp of the local
/// last message (8 bytes, or empty if unknown), follower TTL ms, page size.
///
/// Returns `[epoch, seq, rewound, wire...]`: the first [`PAGE`] messages of the history after
/// the local last offset if the epochs match, else of all of it (the caller reads the rest
/// page by page, so that no reply is large and no other client waits long).
///
/// * A topic nobody published to gets an epoch for its followers that lives only the
///   follower TTL (the node TTL; followers renew it with `TOUCH`, a first publish makes it
///   the topic TTL): merely following names leaves nothing behind.
/// * A Redis that went back to an older snapshot (a restore, a failover to a replica that
///   lagged) has the local epoch but either fewer messages than the node saw, or another
///   message (another stamp) at the node's last offset. Then the topic starts a new, empty
///   epoch (`rewound` = `1`), so that every node replaces its log and clients get a reset
///   instead of messages with ids they already had.
const STATE: &str = r"
local meta, hist = KEYS[1], KEYS[2]
local e = redis.call('HGET', meta, 'epoch')
if not e then
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', 0)
  redis.call('PEXPIRE', meta, ARGV[5])
  return {ARGV[1], '0', '0'}
end
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local from = '-'
if e == ARGV[2] then
  local last = tonumber(ARGV[3])
  local rewound = seq < last
  if not rewound and last > 0 and #ARGV[4] == 8 then
    local at = redis.call('XRANGE', hist, '0-' .. last, '0-' .. last)
    if at[1] then
      local w = at[1][2][2]
      local sp = string.find(w, ' ', 1, true)
      rewound = sp ~= nil and string.sub(w, sp + 3, sp + 10) ~= ARGV[4]
    end
  end
  if rewound then
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', 0)
    redis.call('PEXPIRE', meta, ARGV[5])
    return {ARGV[1], '0', '1'}
  end
  from = '(0-' .. ARGV[3]
end
local out = {e, tostring(seq), '0'}
for _, entry in ipairs(redis.call('XRANGE', hist, from, '+', 'COUNT', ARGV[6])) do
  table.insert(out, entry[2][2])
end
return out
";

/// KEYS meta; ARGV follower TTL ms. A follower's renewal of a topic nobody published to yet.
const TOUCH: &str = r"
if redis.call('HGET', KEYS[1], 'seq') == '0' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 0
";

/// KEYS pn, pc, pd, meta, hist, pk; ARGV node, user, data, announce ('1'/'0'), then
/// candidate, body, maxlen, ttl, channel of the announcement, then the membership's nonce.
/// Returns `['1'|'0', id]`: whether the user is now present in the room for the first time.
///
/// A membership is counted once: joining again with a nonce already in `pk` changes nothing.
const JOIN: &str = r"
local pn, pc, pd, pk = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local node, user = ARGV[1], ARGV[2]
if redis.call('HSETNX', pk, node .. '|' .. ARGV[10], user) == 0 then
  return {'0', ''}
end
if redis.call('HINCRBY', pc, node .. '|' .. user, 1) == 1 then
  redis.call('HINCRBY', pn, node, 1)
end
if redis.call('HSETNX', pd, user, ARGV[3]) == 0 then
  return {'0', ''}
end
local id = ''
if ARGV[4] == '1' then
  id = publish(KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
end
return {'1', id}
";

/// KEYS pn, pc, pd, meta, hist, pk; ARGV node, user, announce, then the announcement's
/// publish arguments, then the membership's nonce. Returns `['1'|'0', id]`: whether that was
/// the user's last connection in the room on any node.
///
/// Only a counted membership (its nonce in `pk`) is taken out: leaving with a nonce whose join
/// never ran (it was cut short) or already left changes nothing and announces nothing, so it
/// can neither take away another connection's count nor announce a user still present.
const LEAVE: &str = r"
local pn, pc, pd, pk = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local node, user = ARGV[1], ARGV[2]
if redis.call('HDEL', pk, node .. '|' .. ARGV[9]) == 0 then
  return {'0', ''}
end
local field = node .. '|' .. user
local n = redis.call('HINCRBY', pc, field, -1)
if n <= 0 then
  redis.call('HDEL', pc, field)
  if n == 0 and redis.call('HINCRBY', pn, node, -1) <= 0 then
    redis.call('HDEL', pn, node)
  end
end
if total(pn, pc, user, '') > 0 or redis.call('HDEL', pd, user) == 0 then
  return {'0', ''}
end
local id = ''
if ARGV[3] == '1' then
  id = publish(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
end
return {'1', id}
";

/// KEYS pc, pd. Returns `[user, connections, data, ...]` over the nodes with members.
const MEMBERS: &str = r"
local counts, order = {}, {}
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local bar = string.find(h[i], '|', 1, true)
  local u = string.sub(h[i], bar + 1)
  if counts[u] == nil then
    counts[u] = 0
    table.insert(order, u)
  end
  counts[u] = counts[u] + tonumber(h[i + 1])
end
local out = {}
for _, u in ipairs(order) do
  if counts[u] > 0 then
    table.insert(out, u)
    table.insert(out, tostring(counts[u]))
    table.insert(out, redis.call('HGET', KEYS[2], u) or '')
  end
end
return out
";

/// KEYS pn, pc, pd, meta, hist, pk; ARGV dead node, candidate, maxlen, ttl, channel, then
/// `user, body` pairs: the leave announcements the caller prepared.
///
/// Removes a dead node's counts from a room and announces, in the same step, the leaves of
/// the users that so left it. If a leaving user has no prepared announcement, changes nothing
/// and returns `['need', user, data, ...]`: the caller prepares them and calls again. Returns
/// `['done']` otherwise. A failure changes nothing, so the next sweep simply tries again:
/// no leave is lost.
const EVICT: &str = r"
local pn, pc, pd = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local bodies = {}
for i = 6, #ARGV, 2 do bodies[ARGV[i]] = ARGV[i + 1] end
local prefix = node .. '|'
local mine = {}
local h = redis.call('HGETALL', pc)
for i = 1, #h, 2 do
  if string.sub(h[i], 1, #prefix) == prefix then
    table.insert(mine, string.sub(h[i], #prefix + 1))
  end
end
local leaving, need = {}, {'need'}
for _, u in ipairs(mine) do
  if total(pn, pc, u, node) == 0 then
    local d = redis.call('HGET', pd, u)
    if d then
      table.insert(leaving, u)
      if bodies[u] == nil then
        table.insert(need, u)
        table.insert(need, d)
      end
    end
  end
end
if #need > 1 then return need end
for _, u in ipairs(leaving) do
  publish(KEYS[4], KEYS[5], ARGV[2], bodies[u], ARGV[3], ARGV[4], ARGV[5])
  redis.call('HDEL', pd, u)
end
for _, u in ipairs(mine) do redis.call('HDEL', pc, prefix .. u) end
redis.call('HDEL', pn, node)
local k = redis.call('HGETALL', KEYS[6])
for i = 1, #k, 2 do
  if string.sub(k[i], 1, #prefix) == prefix then redis.call('HDEL', KEYS[6], k[i]) end
end
return {'done'}
";

/// KEYS pn, pc, pd, meta, hist, pk; ARGV node, candidate, maxlen, ttl, channel, mark, then
/// `user, data, join body, nonces` quadruples (`nonces`: the user's memberships,
/// space-separated): restores a node's memberships and counts in a room from a snapshot taken
/// when the next nonce was `mark` (after Redis lost them, or after the node was declared dead)
/// and announces, in the same step, the users that so became present.
///
/// The node's memberships numbered below the mark that the snapshot lacks are dropped (they
/// left before it); those from the mark on are kept (they joined after it, and their own
/// join script counts them whether it ran before or runs after this one). The counts are
/// then those of the memberships.
const REGISTER: &str = r"
local pn, pc, pd, pk = KEYS[1], KEYS[2], KEYS[3], KEYS[6]
local node, mark = ARGV[1], tonumber(ARGV[6])
local prefix = node .. '|'
local keep, data, body = {}, {}, {}
for i = 7, #ARGV, 4 do
  local u = ARGV[i]
  data[u], body[u] = ARGV[i + 1], ARGV[i + 2]
  for t in string.gmatch(ARGV[i + 3], '%S+') do keep[t] = u end
end
local h = redis.call('HGETALL', pk)
for i = 1, #h, 2 do
  if string.sub(h[i], 1, #prefix) == prefix then
    local t = string.sub(h[i], #prefix + 1)
    if keep[t] == nil and (tonumber(t) or 0) < mark then redis.call('HDEL', pk, h[i]) end
  end
end
for t, u in pairs(keep) do redis.call('HSETNX', pk, prefix .. t, u) end
h = redis.call('HGETALL', pc)
for i = 1, #h, 2 do
  if string.sub(h[i], 1, #prefix) == prefix then redis.call('HDEL', pc, h[i]) end
end
local counts, order = {}, {}
h = redis.call('HGETALL', pk)
for i = 1, #h, 2 do
  if string.sub(h[i], 1, #prefix) == prefix then
    local u = h[i + 1]
    if counts[u] == nil then
      counts[u] = 0
      table.insert(order, u)
    end
    counts[u] = counts[u] + 1
  end
end
for _, u in ipairs(order) do
  redis.call('HSET', pc, prefix .. u, counts[u])
  if body[u] and redis.call('HSETNX', pd, u, data[u]) == 1 then
    publish(KEYS[4], KEYS[5], ARGV[2], body[u], ARGV[3], ARGV[4], ARGV[5])
  end
end
if #order > 0 then redis.call('HSET', pn, node, #order) else redis.call('HDEL', pn, node) end
return #order
";

/// KEYS alive; ARGV node, ttl ms. Refreshes the node's heartbeat; returns 1 if it was still
/// alive, 0 if its state may be gone (first beat, Redis restarted, or it was declared dead).
const HEARTBEAT: &str = r"
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if was and tonumber(was) >= now then return 1 end
return 0
";

/// KEYS alive. Returns the nodes whose heartbeat expired.
const DEAD: &str = r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
";

/// KEYS alive, the node's room set; ARGV node. Forgets a dead node once it has been evicted
/// from all its rooms (unless it came back meanwhile).
const FORGET: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) < now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";
