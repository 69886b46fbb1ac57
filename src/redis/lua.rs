//! The Lua scripts: every step that must be atomic across nodes runs in one of them.
//!
//! Keys (`p` is the configured prefix, `ns` the hub's namespace, `topic` a topic or room name,
//! which comes last so that no two keys can collide):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p:meta:ns:topic` | hash | `epoch` (hex, set once with `HSETNX`), `seq` (last offset) |
//! | `p:hist:ns:topic` | stream | the capped history; entry id `0-<offset>`, field `m` = wire form |
//! | `p:ch:ns:topic` | channel | every message's wire form, published by the same script |
//! | `p:alive:node` | string | a node's heartbeat, expires after the node TTL |
//! | `p:nodes` | set | nodes that registered presence |
//! | `p:nr:node` | set | rooms where a node has members |
//! | `p:pn:room` | set | nodes with members in a room |
//! | `p:pc:node:room` | hash | a node's connections per user in a room |
//! | `p:pd:room` | hash | users announced present in a room (their data): first join / last leave |

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
  redis.call('PUBLISH', channel, wire)
  return id
end
";

/// Counts a user's connections in a room over the nodes that are alive.
const TOTAL_FN: &str = r"
local function total(p, room, user)
  local t = 0
  for _, nd in ipairs(redis.call('SMEMBERS', p .. ':pn:' .. room)) do
    if redis.call('EXISTS', p .. ':alive:' .. nd) == 1 then
      t = t + tonumber(redis.call('HGET', p .. ':pc:' .. nd .. ':' .. room, user) or '0')
    end
  end
  return t
end
";

/// KEYS meta, hist; ARGV candidate epoch, body, maxlen, ttl, channel, deadline (Unix ms).
///
/// A publish that reaches Redis after its deadline (Redis was stalled and the node's call has
/// already timed out and reported the failure) does nothing and answers `EXPIRED`: a publish
/// reported as failed is never delivered later.
pub(crate) fn publish() -> String {
    format!(
        "{PUBLISH_FN}
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[6]) then
  return redis.error_reply('EXPIRED publish past its deadline')
end
return publish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])"
    )
}

/// KEYS meta, hist; ARGV candidate epoch, local epoch, local last offset, ttl.
/// Returns `[epoch, seq, wire...]`: the history after the local last offset if the epochs
/// match, else all of it. Creates the topic's epoch if it has none.
pub(crate) const STATE: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'seq', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local e = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
local from = '-'
if e == ARGV[2] then from = '(0-' .. ARGV[3] end
local out = {e, tostring(seq)}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], from, '+')) do
  table.insert(out, entry[2][2])
end
return out
";

/// ARGV p, room, node, user, data, announce ('1'/'0'), then the publish arguments (meta,
/// hist, candidate, body, maxlen, ttl, channel). Returns `['1'|'0', id]`: whether the user
/// is now present in the room for the first time.
pub(crate) fn join() -> String {
    format!(
        "{PUBLISH_FN}\n{}",
        r"
local p, room, node, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SADD', p .. ':nodes', node)
redis.call('SADD', p .. ':nr:' .. node, room)
redis.call('SADD', p .. ':pn:' .. room, node)
redis.call('HINCRBY', p .. ':pc:' .. node .. ':' .. room, user, 1)
if redis.call('HSETNX', p .. ':pd:' .. room, user, ARGV[5]) == 0 then
  return {'0', ''}
end
local id = ''
if ARGV[6] == '1' then
  id = publish(ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
end
return {'1', id}
"
    )
}

/// ARGV p, room, node, user, announce, then the publish arguments. Returns `['1'|'0', id]`:
/// whether that was the user's last connection in the room on any live node.
pub(crate) fn leave() -> String {
    format!(
        "{PUBLISH_FN}\n{TOTAL_FN}\n{}",
        r"
local p, room, node, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p .. ':pc:' .. node .. ':' .. room
if redis.call('HINCRBY', key, user, -1) <= 0 then
  redis.call('HDEL', key, user)
end
if redis.call('HLEN', key) == 0 then
  redis.call('SREM', p .. ':pn:' .. room, node)
  redis.call('SREM', p .. ':nr:' .. node, room)
end
if total(p, room, user) > 0 or redis.call('HDEL', p .. ':pd:' .. room, user) == 0 then
  return {'0', ''}
end
local id = ''
if ARGV[5] == '1' then
  id = publish(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
end
return {'1', id}
"
    )
}

/// ARGV p, room. Returns `[user, connections, data, ...]` over the live nodes.
pub(crate) const MEMBERS: &str = r"
local p, room = ARGV[1], ARGV[2]
local counts, order = {}, {}
for _, nd in ipairs(redis.call('SMEMBERS', p .. ':pn:' .. room)) do
  if redis.call('EXISTS', p .. ':alive:' .. nd) == 1 then
    local h = redis.call('HGETALL', p .. ':pc:' .. nd .. ':' .. room)
    for i = 1, #h, 2 do
      if counts[h[i]] == nil then
        counts[h[i]] = 0
        table.insert(order, h[i])
      end
      counts[h[i]] = counts[h[i]] + tonumber(h[i + 1])
    end
  end
end
local out = {}
for _, u in ipairs(order) do
  if counts[u] > 0 then
    table.insert(out, u)
    table.insert(out, tostring(counts[u]))
    table.insert(out, redis.call('HGET', p .. ':pd:' .. room, u) or '')
  end
end
return out
";

/// ARGV p, node, ttl ms. Refreshes the node's heartbeat; returns 1 if it was still alive,
/// 0 if its state may be gone (first beat, Redis restarted, or it was declared dead).
pub(crate) const HEARTBEAT: &str = r"
local was = redis.call('SET', ARGV[1] .. ':alive:' .. ARGV[2], '1', 'PX', ARGV[3], 'GET')
redis.call('SADD', ARGV[1] .. ':nodes', ARGV[2])
if was then return 1 end
return 0
";

/// ARGV p, room, node, then `user, connections, data` triples: restores the node's counts in a
/// room. Returns the users that became present (their joins are to be announced).
pub(crate) const REGISTER: &str = r"
local p, room, node = ARGV[1], ARGV[2], ARGV[3]
local key = p .. ':pc:' .. node .. ':' .. room
redis.call('DEL', key)
redis.call('SADD', p .. ':nr:' .. node, room)
redis.call('SADD', p .. ':pn:' .. room, node)
local out = {}
for i = 4, #ARGV, 3 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  if redis.call('HSETNX', p .. ':pd:' .. room, ARGV[i], ARGV[i + 2]) == 1 then
    table.insert(out, ARGV[i])
    table.insert(out, ARGV[i + 2])
  end
end
return out
";

/// ARGV p. Removes the nodes whose heartbeat expired with their counts; returns
/// `[room, user, data, ...]` for the users that so left their room (leaves to announce).
pub(crate) fn sweep() -> String {
    format!(
        "{TOTAL_FN}\n{}",
        r"
local p = ARGV[1]
local out = {}
for _, nd in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if redis.call('EXISTS', p .. ':alive:' .. nd) == 0 then
    for _, room in ipairs(redis.call('SMEMBERS', p .. ':nr:' .. nd)) do
      local key = p .. ':pc:' .. nd .. ':' .. room
      local users = redis.call('HKEYS', key)
      redis.call('DEL', key)
      redis.call('SREM', p .. ':pn:' .. room, nd)
      for _, u in ipairs(users) do
        if total(p, room, u) == 0 then
          local d = redis.call('HGET', p .. ':pd:' .. room, u)
          if d then
            redis.call('HDEL', p .. ':pd:' .. room, u)
            table.insert(out, room)
            table.insert(out, u)
            table.insert(out, d)
          end
        end
      end
    end
    redis.call('DEL', p .. ':nr:' .. nd)
    redis.call('SREM', p .. ':nodes', nd)
  end
end
return out
"
    )
}
