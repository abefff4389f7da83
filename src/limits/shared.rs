//! Counters in Redis, shared by every instance. A check is one Lua script (atomic in Redis) over
//! all of a request's rules, on Redis's clock, so instances with skewed clocks still agree.
//!
//! A window bucket is a sorted set of `"<request id>:<units>"` scored by time, plus a running
//! total (`…:sum`). A concurrency bucket is a sorted set of request ids scored by lease expiry:
//! this instance renews the leases of its requests in flight, so the slots of an instance that
//! died free themselves after `limits.concurrency_lease_ms`.

use super::{Kind, Outcome, Refusal, Rule, Status};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local n = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local function units(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
local used = {}
local fail, retry = 0, -1
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3])
  local cost = tonumber(ARGV[base + 4])
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local u
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    u = redis.call('ZCARD', z)
  else
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
    if #old > 0 then
      local freed = 0
      for _, m in ipairs(old) do freed = freed + units(m) end
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
      redis.call('DECRBY', s, freed)
    end
    u = math.max(0, tonumber(redis.call('GET', s) or '0'))
  end
  used[i] = u
  if fail == 0 and u + cost > limit then
    fail = i
    if cost > limit then
      retry = -1
    elseif kind == 'c' then
      retry = 1000
    else
      local need = u + cost - limit
      local freed, start = 0, 0
      retry = window
      while true do
        local batch = redis.call('ZRANGE', z, start, start + 99, 'WITHSCORES')
        if #batch == 0 then break end
        local found = false
        for j = 1, #batch, 2 do
          freed = freed + units(batch[j])
          if freed >= need then
            retry = math.max(1, tonumber(batch[j + 1]) + window - now)
            found = true
            break
          end
        end
        if found then break end
        start = start + 100
      end
    end
  end
end
local out = {fail, retry}
for i = 1, n do
  local base = 3 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local window = tonumber(ARGV[base + 3])
  local cost = tonumber(ARGV[base + 4])
  local z, s = KEYS[2 * i - 1], KEYS[2 * i]
  local u = used[i]
  if fail == 0 and cost > 0 then
    if kind == 'c' then
      redis.call('ZADD', z, now + lease, id)
      redis.call('PEXPIRE', z, lease * 2)
    else
      redis.call('ZADD', z, now, id .. ':' .. cost)
      redis.call('INCRBY', s, cost)
      redis.call('PEXPIRE', z, window + 1000)
      redis.call('PEXPIRE', s, window + 1000)
    end
    u = u + cost
  end
  local reset = 0
  if kind ~= 'c' then
    local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
    if #last == 2 then reset = math.max(0, tonumber(last[2]) + window - now) end
  end
  out[#out + 1] = u
  out[#out + 1] = reset
end
return out
"#;

/// Replaces a request's token entry (`KEYS`: set, sum; `ARGV`: old member, new member, delta).
const CORRECT: &str = r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], score, ARGV[2]) end
redis.call('INCRBY', KEYS[2], ARGV[3])
return 1
"#;

/// The Redis-backed limiter.
pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    lease_ms: u64,
    check: redis::Script,
    correct: redis::Script,
    /// Concurrency slots this instance holds: request id → set keys (renewed periodically).
    held: Mutex<HashMap<Arc<str>, Vec<String>>>,
}

impl Shared {
    pub fn new(conn: ConnectionManager, prefix: &str, lease_ms: u64) -> Shared {
        Shared {
            conn,
            prefix: format!("{prefix}:rl:"),
            lease_ms,
            check: redis::Script::new(CHECK),
            correct: redis::Script::new(CORRECT),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn set_key(&self, bucket: &str) -> String {
        format!("{}{bucket}", self.prefix)
    }

    fn sum_key(&self, bucket: &str) -> String {
        format!("{}{bucket}:sum", self.prefix)
    }

    pub async fn check(&self, id: &str, rules: &[Rule]) -> redis::RedisResult<Outcome> {
        let mut inv = self.check.prepare_invoke();
        inv.arg(id).arg(rules.len()).arg(self.lease_ms);
        for r in rules {
            inv.key(self.set_key(&r.bucket))
                .key(self.sum_key(&r.bucket));
            let kind = if r.kind == Kind::Concurrency {
                "c"
            } else {
                "w"
            };
            inv.arg(kind).arg(r.limit).arg(r.window_ms).arg(r.cost);
        }
        let mut conn = self.conn.clone();
        let out: Vec<i64> = inv.invoke_async(&mut conn).await?;
        let bad = || redis::RedisError::from((redis::ErrorKind::Parse, "unexpected script reply"));
        if out.len() != 2 + 2 * rules.len() {
            return Err(bad());
        }
        let refused = (out[0] > 0).then(|| Refusal {
            rule: (out[0] - 1) as usize,
            retry_after_ms: (out[1] >= 0).then_some(out[1] as u64),
        });
        let statuses = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let used = out[2 + 2 * i].max(0) as u64;
                Status {
                    limit: r.limit,
                    remaining: r.limit.saturating_sub(used),
                    reset_ms: out[3 + 2 * i].max(0) as u64,
                }
            })
            .collect();
        Ok(Outcome { refused, statuses })
    }

    /// Remembers the concurrency slots an admitted request took, for renewal.
    pub fn hold(&self, id: &str, rules: &[Rule], outcome: &Outcome) {
        if outcome.refused.is_some() {
            return;
        }
        let keys: Vec<String> = rules
            .iter()
            .filter(|r| r.kind == Kind::Concurrency && r.cost > 0)
            .map(|r| self.set_key(&r.bucket))
            .collect();
        if !keys.is_empty()
            && let Ok(mut held) = self.held.lock()
        {
            held.insert(Arc::from(id), keys);
        }
    }

    /// Frees the request's concurrency slots (in the background).
    pub fn release(&self, id: &str) {
        let keys = self
            .held
            .lock()
            .ok()
            .and_then(|mut h| h.remove(id))
            .unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.zrem(k, &id).ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::warn!(error = %e, "rate limiter: could not free a concurrency slot (its lease will expire)");
            }
        });
    }

    /// Replaces the request's token estimate by `actual`.
    pub async fn correct(&self, id: &str, rules: &[Rule], actual: u64) {
        let mut conn = self.conn.clone();
        for r in rules
            .iter()
            .filter(|r| r.kind == Kind::Tokens && r.cost != actual && r.cost > 0)
        {
            let new_member = if actual > 0 {
                format!("{id}:{actual}")
            } else {
                String::new()
            };
            let delta = actual as i64 - r.cost as i64;
            let result: redis::RedisResult<i64> = self
                .correct
                .key(self.set_key(&r.bucket))
                .key(self.sum_key(&r.bucket))
                .arg(format!("{id}:{}", r.cost))
                .arg(new_member)
                .arg(delta)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "rate limiter: could not correct a token estimate");
            }
        }
    }

    /// Extends the leases of every slot this instance holds.
    pub async fn renew(&self) {
        let held: Vec<(Arc<str>, Vec<String>)> = match self.held.lock() {
            Ok(h) => h.iter().map(|(k, v)| (Arc::clone(k), v.clone())).collect(),
            Err(_) => return,
        };
        if held.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let now: redis::RedisResult<(u64, u64)> = redis::cmd("TIME").query_async(&mut conn).await;
        let Ok((secs, micros)) = now else {
            return;
        };
        let expiry = secs * 1000 + micros / 1000 + self.lease_ms;
        let mut pipe = redis::pipe();
        for (id, keys) in &held {
            for k in keys {
                pipe.cmd("ZADD")
                    .arg(k)
                    .arg("XX")
                    .arg(expiry)
                    .arg(&**id)
                    .ignore();
                pipe.pexpire(k, (self.lease_ms * 2) as i64).ignore();
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(error = %e, "rate limiter: could not renew concurrency leases");
        }
    }
}
