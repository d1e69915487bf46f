//! The Lua scripts the Redis store runs: each write is one atomic script on
//! one shard (every key it touches shares the tenant's hash tag).

pub(super) const INGEST: &str = r#"
-- KEYS: idem(id), idem(header or id again), event, event deliveries, schedule, stats, types,
--       event's pending count, webhook version, the tenant's events by time,
--       then (delivery, webhook index) pairs
-- ARGV: answer, event, ttl, due, tenant, type, now, n, webhook version the fan-out used,
--       event id, then (delivery id, delivery json, webhook id) triples
-- Returns {1, ''} written, {0, first answer} a replay, {2, ''} fan-out from stale webhooks.
for i = 1, 2 do
  local prev = redis.call('GET', KEYS[i])
  if prev then return {0, prev} end
end
if (redis.call('GET', KEYS[9]) or '0') ~= ARGV[9] then return {2, ''} end
local ttl = ARGV[3]
local n = tonumber(ARGV[8])
if n > 0 then
  -- The event, its delivery list and the answer under its id stay while
  -- any of its deliveries is pending (FINISH sets their expiry).
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('SET', KEYS[8], n)
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ttl)
end
if KEYS[2] ~= KEYS[1] then redis.call('SET', KEYS[2], ARGV[1], 'EX', ttl) end
redis.call('HINCRBY', KEYS[7], 'c:' .. ARGV[6], 1)
redis.call('HSET', KEYS[7], 'l:' .. ARGV[6], ARGV[7])
redis.call('ZADD', KEYS[10], ARGV[7], ARGV[10])
for i = 0, n - 1 do
  local did, djson, wid = ARGV[11 + i * 3], ARGV[12 + i * 3], ARGV[13 + i * 3]
  redis.call('SET', KEYS[11 + i * 2], djson)
  redis.call('ZADD', KEYS[12 + i * 2], 0, did)
  redis.call('RPUSH', KEYS[4], did)
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[5] .. '|' .. did)
  redis.call('HINCRBY', KEYS[6], wid .. ':total', 1)
  redis.call('HINCRBY', KEYS[6], wid .. ':pending', 1)
end
return {1, ''}
"#;

pub(super) const PUT_PLUGIN: &str = r#"
-- KEYS: sequence, versions hash, current hash; ARGV: name, version json (with
-- "version":0 to be numbered here)
local v = redis.call('INCR', KEYS[1])
local record = string.gsub(ARGV[2], '"version":0', '"version":' .. v, 1)
redis.call('HSET', KEYS[2], v, record)
redis.call('HSET', KEYS[3], ARGV[1], v)
return record
"#;

pub(super) const FINISH: &str = r#"
-- KEYS: delivery, attempts, schedule, stats, event, event's pending count,
--       event's delivery list, answer under the event id, last errors
-- ARGV: delivery json, attempt json or '', status, webhook id, member, next due or '', ttl,
--       duration ms, attempt end ms, 's'ucceeded / 'f'ailed / 'k' skipped / '', error
local prev = redis.call('GET', KEYS[1])
if not prev then return redis.error_reply('delivery not found') end
local old = cjson.decode(prev)['status']
local new = ARGV[3]
local wid, ttl = ARGV[4], ARGV[7]
if old ~= new then
  redis.call('HINCRBY', KEYS[4], wid .. ':' .. old, -1)
  redis.call('HINCRBY', KEYS[4], wid .. ':' .. new, 1)
end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[4], wid .. ':attempts', 1)
  redis.call('HINCRBY', KEYS[4], wid .. ':duration', ARGV[8])
  -- The "last" fields move forward only (attempts may be recorded out of order).
  local function later(field)
    local key = wid .. ':' .. field
    if tonumber(redis.call('HGET', KEYS[4], key) or '0') <= tonumber(ARGV[9]) then
      redis.call('HSET', KEYS[4], key, ARGV[9])
      return true
    end
    return false
  end
  later('last_attempt_at')
  if ARGV[10] == 's' then later('last_success_at') end
  if ARGV[10] == 'f' and later('last_failure_at') then
    redis.call('HSET', KEYS[9], wid, ARGV[11])
  end
end
-- Pending records never expire; finished ones expire after the retention.
if new == 'pending' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  if old ~= 'pending' then
    redis.call('INCR', KEYS[6])
    for i = 5, 8 do if i ~= 6 then redis.call('PERSIST', KEYS[i]) end end
  end
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('ZREM', KEYS[3], ARGV[5])
  if old == 'pending' and redis.call('DECR', KEYS[6]) <= 0 then
    redis.call('DEL', KEYS[6])
    for i = 5, 8 do if i ~= 6 then redis.call('EXPIRE', KEYS[i], ttl) end end
  end
end
return 1
"#;

pub(super) const CREATE_TENANT: &str = r#"
-- KEYS: tenants, api keys; ARGV: id, json, key hash
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
return 1
"#;

/// A job's lease: taken when free, renewed by its holder.
/// KEYS: lease; ARGV: holder, ttl ms. Returns 1 when held by `holder`.
pub(super) static TAKE_LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Gives a job's lease back, if `holder` still has it.
/// KEYS: lease; ARGV: holder.
pub(super) static RELEASE_LEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| {
        redis::Script::new(
            r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
        )
    });

/// One take of a rate limit (GCRA, as `crate::limit::take`).
/// KEYS: arrival time; ARGV: now ms, interval ms, tolerance ms, n.
/// Returns the wait in ms as a string ("0" when the units pass).
pub(super) static TAKE_RATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local now, interval, tolerance, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local nxt = tat + interval * n
local allowed_at = nxt - tolerance
if allowed_at > now then return tostring(allowed_at - now) end
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil(nxt - now) + 1000)
return '0'
"#,
    )
});

/// New deliveries of an existing event (a resend or replay).
/// KEYS: event, event's delivery list, schedule, stats, event's pending
///       count, answer under the event id, then (delivery, webhook index) pairs
/// ARGV: tenant, n, then (delivery id, delivery json, webhook id, due) quadruples
/// Returns 0 if the event is gone, else 1.
pub(super) const ADD_DELIVERIES: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local did, djson, wid, due = ARGV[3 + i * 4], ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4]
  redis.call('SET', KEYS[7 + i * 2], djson)
  redis.call('ZADD', KEYS[8 + i * 2], 0, did)
  redis.call('RPUSH', KEYS[2], did)
  redis.call('ZADD', KEYS[3], due, ARGV[1] .. '|' .. did)
  redis.call('HINCRBY', KEYS[4], wid .. ':total', 1)
  redis.call('HINCRBY', KEYS[4], wid .. ':pending', 1)
end
-- Pending again: the event, its list and its answer stay until they finish
-- (FINISH sets their expiry when the count is back to 0).
redis.call('INCRBY', KEYS[5], n)
for _, k in ipairs({KEYS[1], KEYS[2], KEYS[6]}) do redis.call('PERSIST', k) end
return 1
"#;

/// Stores a replay unless its idempotency key made one before (answered).
/// KEYS: replay ids by key, replays; ARGV: key or '', id, json.
pub(super) static PUT_REPLAY: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if ARGV[1] ~= '' then
  local prev = redis.call('HGET', KEYS[1], ARGV[1])
  if prev then return redis.call('HGET', KEYS[2], prev) end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return false
"#,
    )
});

/// Reserves one unit of a rate limit (as `crate::limit::reserve`).
/// KEYS: arrival time; ARGV: now ms, interval ms, tolerance ms.
/// Returns when the unit may go, in ms, as a string.
pub(super) static RESERVE_RATE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| {
        redis::Script::new(
            r#"
local now, interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local nxt = tat + interval
redis.call('SET', KEYS[1], tostring(nxt), 'PX', math.ceil(nxt - now) + 1000)
local go = nxt - tolerance
if go < now then go = now end
return tostring(go)
"#,
        )
    });

/// Holds a rate limit until a time (as `crate::limit::hold`).
/// KEYS: arrival time; ARGV: until ms, interval ms, tolerance ms, now ms.
pub(super) static HOLD_RATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local held = tonumber(ARGV[1]) + tonumber(ARGV[3]) - tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > held then held = tat end
redis.call('SET', KEYS[1], tostring(held), 'PX', math.ceil(held - tonumber(ARGV[4])) + 1000)
return 1
"#,
    )
});
