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

/// Most members one `PAGE` call returns (a longer page is read in several calls), so that
/// no reply is large and no other client waits long.
pub(super) const MEMBERS_MAX: usize = 1_000;

/// The scripts of one backend, built for its publish command.
pub(super) struct Scripts {
    pub(super) publish: Script,
    pub(super) state: Script,
    pub(super) touch: Script,
    pub(super) join: Script,
    pub(super) leave: Script,
    pub(super) page: Script,
    pub(super) evict: Script,
    pub(super) reconcile: Script,
    pub(super) prune: Script,
    pub(super) heartbeat: Script,
    pub(super) dead: Script,
    pub(super) forget: Script,
}

impl Scripts {
    /// `sharded`: publish with `SPUBLISH` (Redis Cluster) instead of `PUBLISH`.
    pub(super) fn new(sharded: bool) -> Self {
        let command = if sharded { "SPUBLISH" } else { "PUBLISH" };
        let with = |body: &str| {
            let body = format!("{PUBLISH_FN}\n{NOTIFY_FN}\n{body}");
            Script::new(&body.replace("PUBLISH_COMMAND", command))
        };
        Self {
            publish: Script::new(&format!(
                "{NOW}\n{}\n{PUBLISH}",
                PUBLISH_FN.replace("PUBLISH_COMMAND", command)
            )),
            state: Script::new(STATE),
            touch: Script::new(TOUCH),
            join: with(JOIN),
            leave: with(LEAVE),
            page: Script::new(PAGE_MEMBERS),
            evict: with(EVICT),
            reconcile: with(RECONCILE),
            prune: Script::new(PRUNE),
            heartbeat: Script::new(&format!("{NOW}\n{HEARTBEAT}")),
            dead: Script::new(&format!("{NOW}\n{DEAD}")),
            forget: Script::new(&format!("{NOW}\n{FORGET}")),
        }
    }
}

/// `publish(meta, hist, candidate epoch, body, maxlen, maxbytes, ttl ms, channel)`: assigns
/// the next id, appends to the history, publishes; returns the id. A new epoch starts an empty
/// history.
///
/// The history keeps at most `maxlen` entries and `maxbytes` bytes (the entries' wire forms,
/// summed in the meta's `bytes`): the oldest entries leave first. A message larger than
/// `maxbytes` on its own is delivered but not kept, and empties the history (it holds a
/// suffix of the log, never one with a hole): a client resuming from before it gets a reset.
const PUBLISH_FN: &str = r"
local function publish(meta, hist, cand, body, maxlen, maxbytes, ttl, channel)
  if redis.call('HSETNX', meta, 'epoch', cand) == 1 then
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'bytes', 0)
  end
  local e = redis.call('HGET', meta, 'epoch')
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local id = e .. '-' .. seq
  local wire = id .. ' ' .. body
  local cap = tonumber(maxbytes)
  if #wire > cap then
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'bytes', 0)
  else
    redis.call('XADD', hist, '0-' .. seq, 'm', wire)
    local bytes = tonumber(redis.call('HGET', meta, 'bytes') or '0') + #wire
    local len = redis.call('XLEN', hist)
    local keep = tonumber(maxlen)
    while len > 1 and (len > keep or bytes > cap) do
      local old = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)[1]
      if not old then break end
      redis.call('XDEL', hist, old[1])
      bytes = bytes - #old[2][2]
      len = len - 1
    end
    if len <= 1 or bytes < #wire then bytes = #wire end
    redis.call('HSET', meta, 'bytes', bytes)
    redis.call('PEXPIRE', hist, ttl)
  end
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PUBLISH_COMMAND', channel, wire)
  return id
end
";

/// `notify(channel, body)`: publishes a live-only notice (a presence change): `~` where a
/// message has its id, no offset, nothing kept. It reaches the nodes subscribed at that
/// moment, in order with the messages published around it.
const NOTIFY_FN: &str = r"
local function notify(channel, body)
  redis.call('PUBLISH_COMMAND', channel, '~ ' .. body)
end
";

/// `now`: the Redis clock in Unix milliseconds.
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS meta, hist, nonces (hash: nonce -> id), nonce deadlines (sorted set); ARGV candidate
/// epoch, body, maxlen, maxbytes, ttl, channel, deadline (Unix ms, Redis's clock).
///
/// A publish that reaches Redis after its deadline (Redis was stalled, or the link slow: the
/// node's call has timed out, or would before the answer came back) does nothing and answers
/// `EXPIRED`. The node sets the deadline a margin before its own timeout, so a publish
/// reported as failed is not delivered later unless its answer took longer than that margin
/// to come back (see the module docs' "Faults").
///
/// A publish runs once: its nonce (the body's random stamp) is kept until its deadline, and a
/// second run of the same publish (a Redis Cluster client resends a request whose connection
/// dropped, though it may have run) answers the first run's id and changes nothing. Past the
/// deadline a resend is refused anyway.
const PUBLISH: &str = r"
local deadline = tonumber(ARGV[7])
-- At the deadline's own millisecond the answer may no longer be back in time: refuse.
if now >= deadline then
  return redis.error_reply('EXPIRED publish past its deadline')
end
local nonce = string.sub(ARGV[2], 3, 10)
local done = redis.call('HGET', KEYS[3], nonce)
if done then return done end
local id = publish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now, 'LIMIT', 0, 256)
if #expired > 0 then
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREM', KEYS[4], unpack(expired))
end
redis.call('HSET', KEYS[3], nonce, id)
redis.call('ZADD', KEYS[4], deadline, nonce)
local keep = math.max(deadline - now, redis.call('PTTL', KEYS[3]), 1)
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
return id";

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
  redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', 0, 'bytes', 0)
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
    redis.call('HSET', meta, 'epoch', ARGV[1], 'seq', 0, 'bytes', 0)
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

/// KEYS pc, pd, pk, pz, pu; ARGV node, user, data, announce ('1'/'0'), the announcement's
/// body, the room's channel, the connection, the join's sequence number. Returns 1 if the
/// user is now present in the room for the first time (then announced, live only, if asked),
/// else 0.
///
/// A membership (node and connection) is counted once: joining again with one already in
/// `pk` counts and announces nothing. `pk` keeps the sequence number with the user
/// (`seq user`), which `LEAVE` and `RECONCILE` compare; joining again raises it to the join's,
/// so that a leave issued before this join and run after it (a script Redis had to load
/// first is sent again, after what was sent meanwhile) can't take the membership away.
const JOIN: &str = r"
local pc, pd, pk, pz, pu = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, user = ARGV[1], ARGV[2]
local f = node .. '|' .. ARGV[7]
local v = redis.call('HGET', pk, f)
if v then
  local sp = string.find(v, ' ', 1, true)
  if sp and (tonumber(string.sub(v, 1, sp - 1)) or 0) < tonumber(ARGV[8]) then
    redis.call('HSET', pk, f, ARGV[8] .. string.sub(v, sp))
  end
  return 0
end
redis.call('HSET', pk, f, ARGV[8] .. ' ' .. user)
redis.call('HINCRBY', pc, node .. '|' .. user, 1)
redis.call('HINCRBY', pu, user, 1)
if redis.call('HSETNX', pd, user, ARGV[3]) == 0 then
  return 0
end
redis.call('ZADD', pz, 0, user)
if ARGV[4] == '1' then notify(ARGV[6], ARGV[5]) end
return 1
";

/// KEYS pc, pd, pk, pz, pu; ARGV node, announce, the announcement's body, the room's channel,
/// the connection, a sequence number. Takes the connection's membership out if it was
/// numbered below that number; returns 1 if that was the user's last connection in the room
/// on any node (then announced, live only, if asked), else 0.
///
/// A membership not counted (its join never ran, or it already left) changes nothing and
/// announces nothing, and neither does one numbered from the given number on: a later join of
/// the same connection, which a leave reordered after it must not take away.
const LEAVE: &str = r"
local pc, pd, pk, pz, pu = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local f = ARGV[1] .. '|' .. ARGV[5]
local v = redis.call('HGET', pk, f)
if not v then return 0 end
local sp = string.find(v, ' ', 1, true)
if not sp or (tonumber(string.sub(v, 1, sp - 1)) or 0) >= tonumber(ARGV[6]) then return 0 end
local user = string.sub(v, sp + 1)
redis.call('HDEL', pk, f)
local field = ARGV[1] .. '|' .. user
if redis.call('HINCRBY', pc, field, -1) <= 0 then
  redis.call('HDEL', pc, field)
end
if redis.call('HINCRBY', pu, user, -1) > 0 then
  return 0
end
redis.call('HDEL', pu, user)
redis.call('ZREM', pz, user)
if redis.call('HDEL', pd, user) == 0 then
  return 0
end
if ARGV[2] == '1' then notify(ARGV[4], ARGV[3]) end
return 1
";

/// KEYS pz, pu, pd; ARGV after (exclusive; empty: from the first), limit (at most
/// [`MEMBERS_MAX`]). Returns `[more, user, connections, data, ...]`: one page of the room's
/// users in ascending order of their ids (byte order), and `1` as `more` if others follow.
/// O(log N + limit): a range of the sorted set and two `HMGET`s.
const PAGE_MEMBERS: &str = r"
local from = '-'
if ARGV[1] ~= '' then from = '(' .. ARGV[1] end
local n = tonumber(ARGV[2])
local users = redis.call('ZRANGE', KEYS[1], from, '+', 'BYLEX', 'LIMIT', 0, n + 1)
local out = {'0'}
if #users > n then
  out[1] = '1'
  table.remove(users)
end
if #users == 0 then return out end
local conns = redis.call('HMGET', KEYS[2], unpack(users))
local data = redis.call('HMGET', KEYS[3], unpack(users))
for i, u in ipairs(users) do
  table.insert(out, u)
  table.insert(out, conns[i] or '1')
  table.insert(out, data[i] or '')
end
return out
";

/// KEYS pc, pd, pk, pz, pu; ARGV dead node, the room's channel, then `user, body` pairs:
/// the leave announcements the caller prepared.
///
/// Removes a dead node's counts from a room and announces (live only), in the same step, the
/// leaves of the users that so left it. If a leaving user has no prepared announcement,
/// changes nothing and returns `['need', user, data, ...]`: the caller prepares them and
/// calls again. Returns `['done']` otherwise. A failure changes nothing, so the next sweep
/// simply tries again: no leave is lost.
const EVICT: &str = r"
local pc, pd, pk, pz, pu = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node = ARGV[1]
local bodies = {}
for i = 3, #ARGV, 2 do bodies[ARGV[i]] = ARGV[i + 1] end
local prefix = node .. '|'
local mine, count = {}, {}
local h = redis.call('HGETALL', pc)
for i = 1, #h, 2 do
  if string.sub(h[i], 1, #prefix) == prefix then
    local u = string.sub(h[i], #prefix + 1)
    table.insert(mine, u)
    count[u] = tonumber(h[i + 1]) or 0
  end
end
local leaving, need = {}, {'need'}
for _, u in ipairs(mine) do
  local others = tonumber(redis.call('HGET', pu, u) or '0') - count[u]
  if others <= 0 then
    local d = redis.call('HGET', pd, u)
    table.insert(leaving, u)
    if d and bodies[u] == nil then
      table.insert(need, u)
      table.insert(need, d)
    end
  end
end
if #need > 1 then return need end
for _, u in ipairs(mine) do
  redis.call('HDEL', pc, prefix .. u)
  redis.call('HINCRBY', pu, u, -count[u])
end
for _, u in ipairs(leaving) do
  redis.call('HDEL', pu, u)
  redis.call('ZREM', pz, u)
  if redis.call('HDEL', pd, u) == 1 and bodies[u] then notify(ARGV[2], bodies[u]) end
end
local k = redis.call('HGETALL', pk)
for i = 1, #k, 2 do
  if string.sub(k[i], 1, #prefix) == prefix then redis.call('HDEL', pk, k[i]) end
end
return {'done'}
";

/// KEYS pc, pd, pk, pz, pu; ARGV node (this incarnation's id), the node's own prefix
/// (`<node>.`, shared by its incarnations), the room's channel, mark, `n`, then `n`
/// `user, body` pairs (the leave announcements the caller prepared; an empty body announces
/// nothing), then `user, data, join body, memberships` quadruples (`memberships`:
/// `connection:seq`, space-separated): makes the node's memberships in the room those of a
/// snapshot taken when the next sequence number was `mark`, and announces (live only), in the
/// same step, the users that so became present or absent.
///
/// Memberships of the node's earlier incarnations are dropped. Of this incarnation's, those
/// numbered below the mark that the snapshot lacks are dropped (they left before it; their
/// leave script may never have run); those from the mark on are kept (changes after the
/// snapshot: their own join script counts them, before or after this one); the snapshot's
/// are added if missing, and keep the higher of their two sequence numbers (as a join does). The counts are then those of the memberships; a user left with
/// none on any node (its total in `pu` reaches 0) is no longer present, and its leave is
/// announced as the leave script would. A user still counted on another node or through
/// another membership is not announced.
///
/// As with `EVICT`, if such a leaving user has no prepared announcement, changes nothing and
/// returns `['need', user, data, ...]`: the caller prepares them and calls again. Returns
/// `['done']` otherwise.
const RECONCILE: &str = r"
local pc, pd, pk, pz, pu = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, base, channel, mark = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local prefix = node .. '|'
local first = 6 + 2 * tonumber(ARGV[5])
local leaves = {}
for i = 6, first - 1, 2 do leaves[ARGV[i]] = ARGV[i + 1] end
local keep, data, body = {}, {}, {}
for i = first, #ARGV, 4 do
  local u = ARGV[i]
  data[u], body[u] = ARGV[i + 1], ARGV[i + 2]
  for c, s in string.gmatch(ARGV[i + 3], '(%d+):(%d+)') do keep[c] = {u, s} end
end
local drop, merged, raise = {}, {}, {}
local h = redis.call('HGETALL', pk)
for i = 1, #h, 2 do
  local f = h[i]
  if string.sub(f, 1, #base) == base then
    local sp = string.find(h[i + 1], ' ', 1, true)
    if string.sub(f, 1, #prefix) == prefix and sp then
      local c = string.sub(f, #prefix + 1)
      local s = tonumber(string.sub(h[i + 1], 1, sp - 1)) or 0
      if keep[c] ~= nil or s >= mark then
        merged[c] = string.sub(h[i + 1], sp + 1)
        if keep[c] ~= nil and tonumber(keep[c][2]) > s then
          raise[f] = keep[c][2] .. ' ' .. merged[c]
        end
      else
        table.insert(drop, f)
      end
    else
      table.insert(drop, f)
    end
  end
end
local adds = {}
for c, m in pairs(keep) do
  if merged[c] == nil then
    merged[c] = m[1]
    adds[c] = m
  end
end
local counts, order = {}, {}
for _, u in pairs(merged) do
  if counts[u] == nil then
    counts[u] = 0
    table.insert(order, u)
  end
  counts[u] = counts[u] + 1
end
local old, olds, oldf = {}, {}, {}
h = redis.call('HGETALL', pc)
for i = 1, #h, 2 do
  local f = h[i]
  local bar = string.find(f, '|', 1, true)
  if string.sub(f, 1, #base) == base and bar then
    local u = string.sub(f, bar + 1)
    if old[u] == nil then
      old[u] = 0
      table.insert(olds, u)
    end
    old[u] = old[u] + (tonumber(h[i + 1]) or 0)
    table.insert(oldf, f)
  end
end
local need = {'need'}
for _, u in ipairs(olds) do
  if counts[u] == nil and tonumber(redis.call('HGET', pu, u) or '0') - old[u] <= 0 then
    local d = redis.call('HGET', pd, u)
    if d and leaves[u] == nil then
      table.insert(need, u)
      table.insert(need, d)
    end
  end
end
if #need > 1 then return need end
for _, f in ipairs(drop) do redis.call('HDEL', pk, f) end
for f, v in pairs(raise) do redis.call('HSET', pk, f, v) end
for c, m in pairs(adds) do redis.call('HSETNX', pk, prefix .. c, m[2] .. ' ' .. m[1]) end
for _, f in ipairs(oldf) do redis.call('HDEL', pc, f) end
for _, u in ipairs(olds) do
  if counts[u] == nil and redis.call('HINCRBY', pu, u, -old[u]) <= 0 then
    redis.call('HDEL', pu, u)
    redis.call('ZREM', pz, u)
    local b = leaves[u]
    if redis.call('HDEL', pd, u) == 1 and b and b ~= '' then notify(channel, b) end
  end
end
for _, u in ipairs(order) do
  redis.call('HSET', pc, prefix .. u, counts[u])
  redis.call('HINCRBY', pu, u, counts[u] - (old[u] or 0))
  if data[u] and redis.call('HSETNX', pd, u, data[u]) == 1 and body[u] ~= '' then
    notify(channel, body[u])
  end
  if redis.call('HEXISTS', pd, u) == 1 then redis.call('ZADD', pz, 0, u) end
end
return {'done'}
";

/// KEYS the node's room set; ARGV `room, generation` pairs. Takes each room out of the set if
/// it is still there at that generation (a join that listed it again since wins).
const PRUNE: &str = r"
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
";

/// KEYS alive; ARGV node, ttl ms, then the node's retired incarnations. Refreshes the node's
/// heartbeat, and its retired incarnations' (kept alive until the node evicts them itself);
/// returns `[alive, now]`: `alive` 1 if the node was still alive, 0 if its state may be gone
/// (first beat, Redis restarted, or it was declared dead), and Redis's clock (Unix ms), which
/// publish deadlines use.
const HEARTBEAT: &str = r"
local expires = now + tonumber(ARGV[2])
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], expires, ARGV[1])
for i = 3, #ARGV do redis.call('ZADD', KEYS[1], expires, ARGV[i]) end
if was and tonumber(was) >= now then return {1, now} end
return {0, now}
";

/// KEYS alive. Returns the nodes whose heartbeat expired.
const DEAD: &str = r"
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
";

/// KEYS alive, the node's room set; ARGV node, own ('1'/'0'). Forgets a dead node once it has
/// been evicted from all its rooms (unless it came back meanwhile); an earlier incarnation of
/// the calling node (`own`) at once, whatever its liveness says.
const FORGET: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == '1' or (s and tonumber(s) < now) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
";
