//! A bounded load scenario on loopback: virtual shoppers mix browse : cart : checkout
//! as 10 : 3 : 1 against the commerce endpoints over real HTTP, for a fixed time, then
//! the saga drains and every order must complete with exactly one charge.
//!
//! Part of the test command, bounded to 5 s of load by default; longer runs print the
//! same numbers:
//!
//! ```text
//! cargo test -p recstream-commerce --test commerce_load -- --nocapture
//! COMMERCE_LOAD_SECS=30 COMMERCE_LOAD_USERS=64 cargo test … (the defaults are 5 s, 32 users)
//! ```

mod commerce_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commerce_support::*;
use serde_json::{Value, json};

#[derive(Default)]
struct Stats {
    lat: BTreeMap<&'static str, Vec<Duration>>,
    status: BTreeMap<(&'static str, u16), u64>,
    orders: Vec<(String, String)>,
}

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    if v.is_empty() {
        return 0.0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_browse_cart_checkout_mix() {
    let secs = env_or("COMMERCE_LOAD_SECS", 5);
    let users = env_or("COMMERCE_LOAD_USERS", 32) as usize;
    let products: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("sku-{i:03}"), "name": format!("Product {i}"), "category": format!("c{}", i % 7),
                        "price": {"amount": 500 + 37 * i, "currency": "USD"}, "stock": 1_000_000}))
        .collect();
    let shop = Arc::new(
        Shop::start_with(
            |c| c.sweep_interval_ms = 5_000,
            Some(seed(Value::Array(products))),
        )
        .await,
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for u in 0..users {
        let shop = shop.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("load-{u}");
            let token = shop.token(&user);
            let mut rng: u64 =
                0x9E37_79B9_7F4A_7C15 ^ (u as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut st = Stats::default();
            let mut in_cart = false;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = next() % 14;
                let product = format!("sku-{:03}", next() % 50);
                let t = Instant::now();
                let (op, resp) = if r < 10 {
                    (
                        "browse",
                        shop.http
                            .get(shop.url(&format!("/v1/catalog/products/{product}")))
                            .send()
                            .await,
                    )
                } else if r < 13 || !in_cart {
                    in_cart = true;
                    (
                        "cart_add",
                        shop.http
                            .post(shop.url(&format!("/v1/carts/{user}/items")))
                            .bearer_auth(&token)
                            .json(&json!({"product_id": product, "quantity": 1}))
                            .send()
                            .await,
                    )
                } else {
                    in_cart = false;
                    n += 1;
                    (
                        "checkout",
                        shop.http
                            .post(shop.url("/v1/checkout"))
                            .bearer_auth(&token)
                            .header("Idempotency-Key", format!("{user}-{n}"))
                            .json(&visa())
                            .send()
                            .await,
                    )
                };
                let resp = resp.expect("loopback request");
                let code = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                st.lat.entry(op).or_default().push(t.elapsed());
                *st.status.entry((op, code)).or_default() += 1;
                if op == "checkout" && code == 202 {
                    st.orders
                        .push((user.clone(), body["order_id"].as_str().unwrap().to_string()));
                }
            }
            st
        }));
    }
    let mut all = Stats::default();
    for t in tasks {
        let st = t.await.unwrap();
        for (k, v) in st.lat {
            all.lat.entry(k).or_default().extend(v);
        }
        for (k, v) in st.status {
            *all.status.entry(k).or_default() += v;
        }
        all.orders.extend(st.orders);
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Drain: every accepted order must reach `completed`.
    let drain_start = Instant::now();
    let mut completed = 0;
    for (_, id) in &all.orders {
        let limit = Instant::now() + Duration::from_secs(120);
        loop {
            let o = shop.state.order(id).await.unwrap().unwrap();
            if o.status == recstream_commerce::OrderStatus::Completed {
                completed += 1;
                break;
            }
            assert!(!o.status.is_final(), "order {id} ended {:?}", o.status);
            assert!(Instant::now() < limit, "order {id} stuck in {:?}", o.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let drain = drain_start.elapsed().as_secs_f64();

    let total: u64 = all.status.values().sum();
    println!(
        "\ncommerce load: {users} shoppers, {elapsed:.1} s, {total} requests, {:.0} req/s",
        total as f64 / elapsed
    );
    println!(
        "{:<10} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (op, v) in all.lat.iter_mut() {
        let n = v.len();
        let max = v.iter().max().copied().unwrap_or_default().as_secs_f64() * 1000.0;
        println!(
            "{op:<10} {n:>8} {:>9.2} {:>9.2} {:>9.2} {max:>9.2}",
            pct(v, 0.50),
            pct(v, 0.95),
            pct(v, 0.99)
        );
    }
    println!("status codes: {:?}", all.status);
    println!(
        "orders: {} accepted, {completed} completed; saga drained {drain:.2} s after the load; captures {}",
        all.orders.len(),
        shop.provider.captures()
    );
    assert!(
        all.status.keys().all(|(_, c)| *c < 500),
        "no server errors: {:?}",
        all.status
    );
    assert_eq!(completed, all.orders.len());
    assert_eq!(
        shop.provider.captures() as usize,
        all.orders.len(),
        "one charge per order"
    );
}
