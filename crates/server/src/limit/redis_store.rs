//! Shared limiter state in Redis: one Lua script decides every limit of a request atomically,
//! with Redis's own clock (so instances with skewed clocks agree). The script is the same GCRA
//! as `gcra.rs`; `tests/rate_limits.rs` checks that both give the same answers.

use super::gcra::Decision;
use super::{Count, Limit};
use std::time::Duration;

/// A decision must not wait on a slow Redis: past this, the request uses per-instance limits.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local count = ARGV[n * 3 + 1] ~= '0'
local out = {}
local new_tats = {}
local allowed = true
for i = 1, n do
  local interval = tonumber(ARGV[(i - 1) * 3 + 1])
  local burst = tonumber(ARGV[(i - 1) * 3 + 2])
  local limit = tonumber(ARGV[(i - 1) * 3 + 3])
  -- Stored as "tat:interval"; a changed interval carries the used requests over (gcra::rescale).
  local tat = now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local sep = string.find(stored, ':', 1, true)
    local old_tat = tonumber(string.sub(stored, 1, sep - 1))
    local old_interval = tonumber(string.sub(stored, sep + 1))
    if old_tat > now then
      if old_interval == interval or old_interval <= 0 then
        tat = old_tat
      else
        tat = now + math.floor((old_tat - now) * interval / old_interval)
      end
    end
  end
  local new_tat = tat + interval
  local allow_at = new_tat - burst
  if now < allow_at then
    allowed = false
    out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = tat - now; out[#out + 1] = allow_at - now
  else
    local remaining = math.floor((now - allow_at) / interval)
    if remaining > limit then remaining = limit end
    out[#out + 1] = 1; out[#out + 1] = remaining; out[#out + 1] = new_tat - now; out[#out + 1] = 0
    new_tats[i] = new_tat
  end
end
if allowed and count then
  for i = 1, n do
    local interval = tonumber(ARGV[(i - 1) * 3 + 1])
    redis.call('SET', KEYS[i], string.format('%d:%d', new_tats[i], interval), 'PX', math.ceil((new_tats[i] - now) / 1000) + 1000)
  end
end
return out
"#;

/// Count a failed sign-in (`lockout.rs`): INCR within the window; at the threshold set the
/// lock for the window and start the count over.
const LOCKOUT_FAIL_SCRIPT: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct RedisStore {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    script: redis::Script,
    lockout_fail: redis::Script,
}

/// A Redis call bounded by [`REDIS_TIMEOUT`].
async fn timed<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    tokio::time::timeout(REDIS_TIMEOUT, call)
        .await
        .map_err(|_| "Redis did not answer in time".to_string())?
        .map_err(|e| e.to_string())
}

impl RedisStore {
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::OnceCell::new(),
            script: redis::Script::new(SCRIPT),
            lockout_fail: redis::Script::new(LOCKOUT_FAIL_SCRIPT),
        })
    }

    /// One command answering an integer (PTTL, DEL).
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<i64, String> {
        let mut conn = self.connection().await?;
        timed(cmd.query_async::<i64>(&mut conn)).await
    }

    /// Count a failed sign-in under `failures`; lock `lock` for `window_ms` at `max`.
    pub async fn lockout_fail(&self, failures: &str, lock: &str, max: u32, window_ms: i64) -> Result<(), String> {
        let mut conn = self.connection().await?;
        let mut call = self.lockout_fail.prepare_invoke();
        call.key(failures).key(lock).arg(max).arg(window_ms);
        timed(call.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        let conn =
            tokio::time::timeout(REDIS_TIMEOUT, self.conn.get_or_try_init(|| self.client.get_connection_manager()))
                .await
                .map_err(|_| "timed out connecting to Redis".to_string())?
                .map_err(|e| e.to_string())?;
        Ok(conn.clone())
    }

    pub async fn check(&self, limits: &[Limit], count: Count) -> Result<Vec<Decision>, String> {
        let mut conn = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for l in limits {
            invocation.key(format!("quota:rl:{}", l.key));
            invocation.arg(l.quota.emission_interval()).arg(l.quota.burst_us()).arg(l.quota.limit);
        }
        invocation.arg(if count == Count::Yes { 1 } else { 0 });
        let raw: Vec<i64> = timed(invocation.invoke_async(&mut conn)).await?;
        if raw.len() != limits.len() * 4 {
            return Err(format!("unexpected answer from the rate-limit script ({} values)", raw.len()));
        }
        Ok(raw
            .chunks(4)
            .zip(limits)
            .map(|(c, l)| Decision {
                allowed: c[0] == 1,
                limit: l.quota.limit,
                remaining: c[1].clamp(0, i64::from(u32::MAX)) as u32,
                reset_after_us: c[2],
                retry_after_us: c[3],
            })
            .collect())
    }
}
