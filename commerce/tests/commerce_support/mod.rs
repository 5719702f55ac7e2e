//! Shared harness of the commerce integration tests: a real HTTP server on 127.0.0.1:0
//! over an embedded commerce state (temp dir), a recording clickstream sink, the
//! simulated payment provider kept at hand, and token minting with jsonwebtoken.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use recstream_commerce::auth::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use recstream_commerce::catalog::SeedProduct;
use recstream_commerce::{
    CommerceConfig, CommerceState, Secret, Secrets, SimulatedProvider, Workers, routes,
};
use recstream_ingest::sink::{EventSink, OutRecord, SinkError};
use serde_json::{Value, json};

pub const JWT_SECRET: &str = "commerce-tests-hs256-secret";
pub const WEBHOOK_SECRET: &str = "whsec_commerce_tests";

/// A test-only RSA key (generated for these tests, used nowhere else).
pub const RSA_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEArM9AiyQ/j3tyYTNNA/cDuAxNMlmKNmGbShapID6c1q36cvNA\nKeRm8A+e6al0BVzedfuoRtWw3QbogzUCRPOISA19DWDali64EJLjA6t1eWxcPaMo\nUPjsYhZc0Dpwj3f7HKdDBUw7AhjQ+IYFpYkxz8WSgxOBqeSWR4qMgizJiyW/sr5y\nApfRLZWh+9bMIwe5zQMDuLBwNhL1bHwA3+2p1g98NFoQbJy1E2Q+JRrUFL1E0zLu\nYySzPzf1aQsvDqkkMqiBRCmfsUl78qL1f0XfMKWyrJfeMfoVVH9Gg+T2dd37ZQ4b\nSqSeZ8bZSg3nQrFmS/EmBcVC5XbMB6Xs+LwqMQIDAQABAoIBAAgU9UbMnjBerJ3B\nIXPzBHiCEsYtC9q5O+L+JlC8vOcJYfIoUDLlXK8Te/Ifm654hmrsJxWQ/uGHZi5k\nt0N0REZiYxvSEMb/TlpwFC/iv+6606GKVONckOmRdCvE3+jFyrevVuITi5rwgC1v\nTypLvUmjStPYgLLqXuDfqOyZnZ9lQ8WJ6M6ayL4MW5V0+5c00p/XA06xXuBTFRUF\nHwfGG9lRdYZMm232f0Vv98lYTmHqg4GFkXu3kyifnARcZ3Y3ZyLjKeQbBQY0HNzu\ncUKT6221O5/BolTvrFG0fHrSUDt0mrJG5CxlF9pbXWs6Ct2G53AslEQQlPU7U0EJ\nmkvGyUUCgYEA6himCjAiimQareU5J4D47zeHDsdyQZ+l3knKrxT1dHizcc7Uepai\ne6LZRZWjsoSPbHdQwDguJzre4iU/6EOf9tnEK4x3qOGinucdf2b7uai9uKKg/TZm\nrEV6vthPd9STQ8+wT9kAB5qTMlFxk530KV3r33tE9TboXmX5BSL5J38CgYEAvPqX\nf+rhk+SzXNes1yYoXRzSpF3ZvTAc9QygHAMrWz+u01/qK6EyVSzJAqQBIowC9ldI\nlHXhAhpVg4Xo29S8Y7JnfEhy+fdlywANlsA9nhYs2yLVNiET2TMIW0shpJGvxJ+B\n1tzdcq6Hx372MMQ/NCc7nNnHIS3oAjCYqj8UBk8CgYBXSOGAIvp+B107QaDR7fDj\noRymkg80EMbT30fHiFUNHIQsByaKnufumYXRwD3NLkgb9VESmt/6mKTKRYFSpQRc\nEk5mvnVPbvIntZz2B/wL+bLjyR+lykb2LOHbjuPyljxiqGnhG9Q7AZOoy11B4T9M\nvUxZg6julY6GxBbZp3SnGQKBgDpJuKzVz5oEMmZyh3cc59pAZ6AW6m/2BRh4OnIp\ncBgG/m9n6Bxo7dNjquRLnaYANXGx3kscSLiTUsjsZrRXW3wMrOqilgQPkLAaZhaX\nWOoHwPIePlEhxrN5kBxIgin2XZZx9GRHX25d8rdPq7PC9BOr/jEU4tyTAjqarpvk\nNNL1AoGBAJ2bZtRMOP2ZPlJPop+NK4F4alXFLvLjBlIpDm73V+JpEd9k3K5FPo+5\nyYnAz5witkC8+w/8s0OjlXPzxDTanxAwBh09FmnqrEY4k99FIN00n2K1S+4IU3f9\nUAS6ljRJrHxkELho8tA5Mz/GgIAg2wO/Bw0FC6trhCs8dCLPOA+V\n-----END RSA PRIVATE KEY-----";
/// The public half of [`RSA_PEM`] as a JWKS, the way Cognito publishes it.
pub fn jwks() -> Value {
    json!({"keys": [{"kty": "RSA", "kid": "test-key-1", "use": "sig", "alg": "RS256",
        "n": "rM9AiyQ_j3tyYTNNA_cDuAxNMlmKNmGbShapID6c1q36cvNAKeRm8A-e6al0BVzedfuoRtWw3QbogzUCRPOISA19DWDali64EJLjA6t1eWxcPaMoUPjsYhZc0Dpwj3f7HKdDBUw7AhjQ-IYFpYkxz8WSgxOBqeSWR4qMgizJiyW_sr5yApfRLZWh-9bMIwe5zQMDuLBwNhL1bHwA3-2p1g98NFoQbJy1E2Q-JRrUFL1E0zLuYySzPzf1aQsvDqkkMqiBRCmfsUl78qL1f0XfMKWyrJfeMfoVVH9Gg-T2dd37ZQ4bSqSeZ8bZSg3nQrFmS_EmBcVC5XbMB6Xs-LwqMQ", "e": "AQAB"}]})
}

/// Records what the commerce flows emit into the clickstream.
#[derive(Default)]
pub struct RecordingSink {
    pub records: Mutex<Vec<OutRecord>>,
}

impl RecordingSink {
    pub fn events(&self) -> Vec<Value> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.data).unwrap())
            .collect()
    }
    pub fn of_type(&self, t: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == t)
            .collect()
    }
}

#[async_trait]
impl EventSink for RecordingSink {
    async fn send(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        self.records.lock().unwrap().extend(records);
        Ok(())
    }
}

pub struct Shop {
    pub base: String,
    pub http: reqwest::Client,
    pub state: CommerceState,
    pub provider: Arc<SimulatedProvider>,
    pub sink: Arc<RecordingSink>,
    pub workers: Option<Workers>,
    pub dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn seed(items: Value) -> Vec<SeedProduct> {
    serde_json::from_value(items).unwrap()
}

impl Shop {
    pub async fn start() -> Shop {
        Shop::start_with(|_| {}, None).await
    }

    pub async fn start_with(
        tune: impl FnOnce(&mut CommerceConfig),
        products: Option<Vec<SeedProduct>>,
    ) -> Shop {
        Shop::build(tune, products, true).await
    }

    /// A shop whose saga runs only when the test calls `state.run_saga_pass` (as on
    /// Lambda): no background relay, consumers or timers.
    pub async fn start_on_demand() -> Shop {
        Shop::build(|_| {}, None, false).await
    }

    async fn build(
        tune: impl FnOnce(&mut CommerceConfig),
        products: Option<Vec<SeedProduct>>,
        workers: bool,
    ) -> Shop {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CommerceConfig::for_tests(dir.path());
        tune(&mut cfg);
        let provider = Arc::new(SimulatedProvider::new());
        let sink = Arc::new(RecordingSink::default());
        let secrets = Secrets {
            jwt_hs256: Some(Secret::new(JWT_SECRET)),
            stripe_secret_key: None,
            stripe_webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
        };
        let mut b = CommerceState::builder(cfg, sink.clone())
            .secrets(secrets)
            .provider(provider.clone())
            .jwks(serde_json::from_value(jwks()).unwrap());
        if let Some(p) = products {
            b = b.seed(p);
        }
        let state = b.build().await.unwrap();
        let workers = workers.then(|| state.spawn_workers());
        let app = routes(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Shop {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            state,
            provider,
            sink,
            workers,
            dir,
            server,
        }
    }

    pub fn token(&self, user: &str) -> String {
        token_for(user, 600)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, user: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn add(&self, user: &str, product: &str, qty: u32) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/carts/{user}/items")))
            .bearer_auth(self.token(user))
            .json(&json!({"product_id": product, "quantity": qty}))
            .send()
            .await
            .unwrap()
    }

    pub async fn checkout(&self, user: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/checkout"))
            .bearer_auth(self.token(user))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn order(&self, user: &str, id: &str) -> Value {
        let r = self.get(user, &format!("/v1/orders/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls the order until its status is final (completed, cancelled, refunded).
    pub async fn settle(&self, user: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let o = self.order(user, id).await;
            if ["completed", "cancelled", "refunded"].contains(&o["status"].as_str().unwrap()) {
                return o;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} did not settle: {o:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stock(&self, product: &str) -> (i64, i64) {
        let s = self.state.catalog().stock(product).await.unwrap().unwrap();
        (s.on_hand, s.reserved)
    }

    pub fn notifications(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.notifications_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `f` holds (checked every 20 ms, 10 s at most).
    pub async fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn now_s() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token for `user`, valid for `ttl_s` (negative: already expired).
pub fn token_for(user: &str, ttl_s: i64) -> String {
    let exp = (now_s() as i64 + ttl_s).max(1);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// An HS256 token for `user` in `groups` (Cognito's `cognito:groups` claim).
#[allow(dead_code)]
pub fn token_with_groups(user: &str, groups: &[&str]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": now_s() + 600, "cognito:groups": groups}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// An RS256 token signed with [`RSA_PEM`], key id `test-key-1`.
pub fn rs256_token(user: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("test-key-1".into());
    jsonwebtoken::encode(
        &h,
        &json!({"sub": user, "exp": now_s() + 600, "token_use": "access"}),
        &EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn visa() -> Value {
    json!({"payment_method": "4242424242424242"})
}
