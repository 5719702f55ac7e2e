//! The Redis cold-start cache (ElastiCache in production), the AWS-mode twin of
//! [`InProcessCache`](super::InProcessCache).
//!
//! ```text
//!  training job ─► put(segment, list) ─► SET  <namespace>:coldstart:<segment>  <JSON>
//!  recommend    ─► top(segment)       ─► GET  <namespace>:coldstart:<segment>
//!                     │ every call bounded by `timeout` (50 ms); on failure the circuit opens
//!                     └─► for `breaker` (1 s) calls fail at once ─► Recommender degrades
//!                         to trending and says `degraded: ["cold_start_cache"]`
//! ```
//!
//! # Keys
//!
//! | key | type | value |
//! |---|---|---|
//! | `recstream:coldstart:<segment>` | string | JSON [`ColdStartList`]: `{"items": [["<product id>", <score>], …], "source": "<model version>"}` |
//!
//! `<segment>` is the demographic segment key (`age|gender|region`, e.g.
//! `25-34|f|DE`) or `overall` ([`OVERALL`](super::OVERALL)); it is used verbatim. The
//! `recstream` namespace is configurable ([`RedisOptions::namespace`]) so several
//! deployments or tests can share one Redis. Keys carry no TTL: a list lives until the
//! next training run overwrites it.
//!
//! The connection is a [`ConnectionManager`] (one multiplexed connection, reconnected in
//! the background). It is created lazily: a Redis that is down at start-up does not stop
//! the process, calls just fail (fast) until it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{ColdStartCache, ColdStartList};
use crate::error::ScoringError;

/// Settings of the Redis cache.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// Bound on one call (`top`, `put`, `remove`), connection wait included.
    pub timeout: Duration,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// After a failed call, further calls fail at once for this long (0 = never).
    pub breaker: Duration,
    /// Key namespace: keys are `<namespace>:coldstart:<segment>`.
    pub namespace: String,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            breaker: Duration::from_secs(1),
            namespace: "recstream".into(),
        }
    }
}

/// The Redis implementation of [`ColdStartCache`].
#[derive(Clone)]
pub struct RedisColdStartCache {
    conn: ConnectionManager,
    opts: RedisOptions,
    /// Where Redis is, for logs (no credentials).
    addr: String,
    started: Instant,
    /// Milliseconds since `started` until which the circuit is open.
    open_until_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisColdStartCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisColdStartCache")
            .field("addr", &self.addr)
            .field("opts", &self.opts)
            .finish()
    }
}

impl RedisColdStartCache {
    /// Connects with the default options (50 ms per call, namespace `recstream`).
    pub async fn connect(url: &str) -> Result<RedisColdStartCache, ScoringError> {
        RedisColdStartCache::connect_with(url, RedisOptions::default()).await
    }

    /// Sets up the connection to `url` (`redis://` or `rediss://`) and pings once. Fails
    /// only for an invalid URL: an unreachable Redis is logged, and calls degrade until it
    /// answers.
    pub async fn connect_with(
        url: &str,
        opts: RedisOptions,
    ) -> Result<RedisColdStartCache, ScoringError> {
        let client = redis::Client::open(url)
            .map_err(|e| ScoringError::Cache(format!("invalid redis url: {e}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ScoringError::Cache(format!("redis {addr}: {e}")))?;
        let cache = RedisColdStartCache {
            conn,
            opts,
            addr,
            started: Instant::now(),
            open_until_ms: Arc::new(AtomicU64::new(0)),
        };
        match tokio::time::timeout(
            cache.opts.connect_timeout,
            redis::cmd("PING").query_async::<String>(&mut cache.conn.clone()),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!(addr = %cache.addr, "connected to redis"),
            Ok(Err(e)) => {
                tracing::warn!(addr = %cache.addr, error = %e, "redis is not answering; the cold-start cache degrades until it does");
            }
            Err(_) => {
                tracing::warn!(addr = %cache.addr, "redis did not answer in time; the cold-start cache degrades until it does");
            }
        }
        Ok(cache)
    }

    /// The key of a segment's list.
    pub fn key(&self, segment: &str) -> String {
        format!("{}:coldstart:{segment}", self.opts.namespace)
    }

    /// Checks that Redis answers (for readiness probes); does not consult the breaker.
    pub async fn ping(&self) -> Result<(), ScoringError> {
        let mut conn = self.conn.clone();
        self.bounded("PING", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    /// Deletes a segment's list (a segment that disappeared from the model).
    pub async fn remove(&self, segment: &str) -> Result<(), ScoringError> {
        let (mut conn, key) = (self.conn.clone(), self.key(segment));
        self.guarded("DEL", async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs a command with the breaker: fails at once while it is open, opens it on failure.
    async fn guarded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ScoringError> {
        if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Err(ScoringError::Cache(format!(
                "redis {} unavailable (recent failure; retrying shortly)",
                self.addr
            )));
        }
        let r = self.bounded(op, fut).await;
        if r.is_err() && !self.opts.breaker.is_zero() {
            let until = self.now_ms() + self.opts.breaker.as_millis() as u64;
            self.open_until_ms.fetch_max(until, Ordering::Relaxed);
        }
        r
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ScoringError> {
        match tokio::time::timeout(self.opts.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ScoringError::Cache(format!(
                "redis {op} on {}: {e}",
                self.addr
            ))),
            Err(_) => Err(ScoringError::Cache(format!(
                "redis {op} on {} timed out after {:?}",
                self.addr, self.opts.timeout
            ))),
        }
    }
}

#[async_trait]
impl ColdStartCache for RedisColdStartCache {
    async fn top(&self, segment: &str) -> Result<Option<Arc<ColdStartList>>, ScoringError> {
        let (mut conn, key) = (self.conn.clone(), self.key(segment));
        let raw = self
            .guarded("GET", async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await?;
        match raw {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(|l| Some(Arc::new(l)))
                .map_err(|e| {
                    ScoringError::Cache(format!(
                        "corrupt cold-start list {}: {e}",
                        self.key(segment)
                    ))
                }),
        }
    }

    async fn put(&self, segment: &str, list: &ColdStartList) -> Result<(), ScoringError> {
        let value = serde_json::to_vec(list)
            .map_err(|e| ScoringError::Cache(format!("encoding a cold-start list: {e}")))?;
        let (mut conn, key) = (self.conn.clone(), self.key(segment));
        self.guarded("SET", async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn closed_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn invalid_urls_are_refused() {
        assert!(RedisColdStartCache::connect("not a url").await.is_err());
    }

    #[tokio::test]
    async fn a_closed_port_fails_within_the_timeout_then_fast() {
        let port = closed_port().await;
        let cache = RedisColdStartCache::connect_with(
            &format!("redis://127.0.0.1:{port}/"),
            RedisOptions {
                connect_timeout: Duration::from_millis(200),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(cache.key("25-34|f|DE"), "recstream:coldstart:25-34|f|DE");
        let t = Instant::now();
        assert!(cache.top("overall").await.is_err());
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let err = cache.top("overall").await.unwrap_err();
        assert!(
            t.elapsed() < Duration::from_millis(5),
            "breaker open: {:?}",
            t.elapsed()
        );
        assert!(err.to_string().contains("unavailable"), "{err}");
    }
}
