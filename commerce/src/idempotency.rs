//! `Idempotency-Key` handling, with Stripe's semantics.
//!
//! ```text
//!  begin(user, key, hash(request)) ─► no record      ─► InFlight lock (conditional create) ─► Proceed
//!                                  ─► other hash      ─► 422 idempotency_key_reused
//!                                  ─► Done            ─► replay the stored status + body
//!                                  ─► InFlight, fresh ─► 409 idempotency_in_flight
//!                                  ─► InFlight, stale (> idempotency_lock_ms: the holder died)
//!                                                      ─► take the lock over ─► Proceed
//!  the operation commits its effects together with `Lease::complete_write` (one
//!  transaction): an order exists iff its response is stored, so a retry can never
//!  create a second one.
//! ```
//!
//! Keys are scoped per user and kept `idempotency_ttl_s` (24 h by default).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Ctx;
use super::error::CommerceError;
use super::store::{Cond, Key, StoreError, Write, get_json};

/// The state of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IdemState {
    /// An operation under this key is running (or its holder died).
    InFlight {
        /// When the lock was taken or last taken over, epoch ms.
        started_at_ms: i64,
    },
    /// The operation finished; its response is stored for replay.
    Done {
        /// The HTTP status answered.
        status: u16,
        /// The JSON body answered.
        body: String,
    },
}

/// The stored record of one key (`idem#<user>` / key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    /// [`request_hash`] of the request that first used the key.
    pub request_hash: String,
    /// Running or done.
    #[serde(flatten)]
    pub state: IdemState,
    /// When the record may be dropped, epoch seconds.
    pub expires_at_s: i64,
}

/// The store key of `user_id`'s idempotency key `key`.
pub fn idem_key(user_id: &str, key: &str) -> Key {
    Key::new(format!("idem#{user_id}"), key)
}

/// SHA-256 over the method, path, user and canonical JSON body (keys sorted).
pub fn request_hash(method: &str, path: &str, user_id: &str, body: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(user_id.as_bytes());
    h.update(b"\n");
    // serde_json's map is a BTreeMap: serialization is canonical.
    h.update(serde_json::to_vec(body).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Checks the header value: 1 to 255 visible ASCII characters.
pub fn check_key(key: &str) -> Result<(), CommerceError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommerceError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        ));
    }
    Ok(())
}

/// What `begin` decided for a request with an idempotency key.
#[derive(Debug)]
pub enum Begin {
    /// First use (or a stale lock taken over): run the operation under this lock.
    Proceed(Lease),
    /// Already done: answer with the stored response.
    Replay {
        /// The HTTP status stored.
        status: u16,
        /// The JSON body stored.
        body: String,
    },
}

/// The lock on a key, held while the operation runs.
#[derive(Debug)]
pub struct Lease {
    key: Key,
    version: u64,
    hash: String,
    expires_at_s: i64,
}

impl Lease {
    /// The write that stores the response; put it in the operation's transaction.
    pub fn complete_write(&self, status: u16, body: &str) -> Result<Write, StoreError> {
        let rec = IdemRecord {
            request_hash: self.hash.clone(),
            state: IdemState::Done {
                status,
                body: body.to_string(),
            },
            expires_at_s: self.expires_at_s,
        };
        Ok(Write::Put {
            key: self.key.clone(),
            value: super::store::to_json(&rec)?,
            cond: Cond::Version(self.version),
            expires_at_s: Some(self.expires_at_s),
        })
    }

    /// Whether the lock is still ours (not taken over by a retry after it went stale).
    pub(crate) async fn still_held(&self, ctx: &Ctx) -> Result<bool, CommerceError> {
        Ok(ctx
            .store
            .get(&self.key)
            .await?
            .is_some_and(|i| i.version == self.version))
    }

    /// Stores a final response on its own (a deterministic failure).
    pub(crate) async fn complete(
        self,
        ctx: &Ctx,
        status: u16,
        body: &str,
    ) -> Result<(), CommerceError> {
        match ctx
            .store
            .transact(vec![self.complete_write(status, body)?])
            .await
        {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drops the lock, so the same key may be tried again (transient failures, 409s).
    pub(crate) async fn release(self, ctx: &Ctx) {
        let r = ctx
            .store
            .transact(vec![Write::delete(
                self.key.clone(),
                Cond::Version(self.version),
            )])
            .await;
        if let Err(e) = r
            && !e.is_conflict()
        {
            tracing::warn!(error = %e, "could not release an idempotency lock; it expires by itself");
        }
    }
}

/// Claims `key` for a request with `hash`.
pub(crate) async fn begin(
    ctx: &Ctx,
    user_id: &str,
    key: &str,
    hash: &str,
) -> Result<Begin, CommerceError> {
    check_key(key)?;
    let k = idem_key(user_id, key);
    for _ in 0..8 {
        let now = ctx.clock.now_ms();
        let expires_at_s = now / 1000 + ctx.cfg.idempotency_ttl_s as i64;
        let existing = get_json::<IdemRecord>(ctx.store.as_ref(), "idempotency record", &k).await?;
        let cond = match &existing {
            None => Cond::Absent,
            Some((rec, v)) if rec.expires_at_s < now / 1000 => Cond::Version(*v),
            Some((rec, _)) if rec.request_hash != hash => {
                return Err(CommerceError::unprocessable(
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used with a different request; use a new key",
                ));
            }
            Some((rec, v)) => match &rec.state {
                IdemState::Done { status, body } => {
                    return Ok(Begin::Replay {
                        status: *status,
                        body: body.clone(),
                    });
                }
                IdemState::InFlight { started_at_ms }
                    if now - started_at_ms < ctx.cfg.idempotency_lock_ms as i64 =>
                {
                    return Err(CommerceError::conflict(
                        "idempotency_in_flight",
                        "a request with this Idempotency-Key is still in progress; retry later",
                    ));
                }
                IdemState::InFlight { .. } => Cond::Version(*v),
            },
        };
        let version = match cond {
            Cond::Version(v) => v + 1,
            _ => 1,
        };
        let rec = IdemRecord {
            request_hash: hash.to_string(),
            state: IdemState::InFlight { started_at_ms: now },
            expires_at_s,
        };
        let w = Write::Put {
            key: k.clone(),
            value: super::store::to_json(&rec)?,
            cond,
            expires_at_s: Some(expires_at_s),
        };
        match ctx.store.transact(vec![w]).await {
            Ok(()) => {
                return Ok(Begin::Proceed(Lease {
                    key: k,
                    version,
                    hash: hash.to_string(),
                    expires_at_s,
                }));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommerceError::conflict(
        "idempotency_in_flight",
        "a request with this Idempotency-Key is still in progress; retry later",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_is_canonical() {
        let a = request_hash("POST", "/v1/checkout", "u", &json!({"a": 1, "b": 2}));
        let b = request_hash(
            "POST",
            "/v1/checkout",
            "u",
            &serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            request_hash("POST", "/v1/checkout", "v", &json!({"a": 1, "b": 2}))
        );
    }

    #[test]
    fn key_shape() {
        check_key("abc-123_XYZ").unwrap();
        assert!(check_key("").is_err());
        assert!(check_key("has space").is_err());
        assert!(check_key(&"x".repeat(256)).is_err());
    }
}
