//! The commerce flow end to end over real HTTP on 127.0.0.1:0: carts, checkout with
//! idempotency, the simulated payment provider, the order saga with its compensations,
//! webhooks, authentication, and a consumer crash in the middle of a payment.

#[path = "../commerce/tests/commerce_support/mod.rs"]
mod commerce_support;

use std::collections::HashSet;
use std::time::Duration;

use commerce_support::*;
use recstream_commerce::payment::{Fault, FaultKind, Op};
use recstream_commerce::webhook::signature_header;
use serde_json::{Value, json};

fn events(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_reaches_delivered_and_feeds_the_clickstream() {
    let shop = Shop::start().await;
    let (on_hand_before, _) = shop.stock("p-1001").await;
    assert_eq!(shop.add("alice", "p-1001", 1).await.status(), 200);
    let r = shop.add("alice", "p-1001", 1).await; // increments
    let cart: Value = r.json().await.unwrap();
    assert_eq!(cart["lines"][0]["quantity"], 2);
    let cart: Value = shop.add("alice", "p-1002", 3).await.json().await.unwrap();
    // 2 × 89.99 + 3 × 24.99, in cents, computed by the server.
    assert_eq!(
        cart["subtotal"],
        json!({"amount": 2 * 8999 + 3 * 2499, "currency": "USD"})
    );
    assert_eq!(cart["item_count"], 5);
    assert_eq!(cart["checkout_ready"], true);

    let body = json!({"payment_method": "4242 4242 4242 4242",
        "shipping": {"name": "Alice", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}});
    let r = shop.checkout("alice", "checkout-alice-1", &body).await;
    assert_eq!(r.status(), 202);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["status"], "created");
    assert_eq!(created["total"]["amount"], 2 * 8999 + 3 * 2499);
    let id = created["order_id"].as_str().unwrap().to_string();

    let order = shop.settle("alice", &id).await;
    assert_eq!(order["status"], "completed", "{order:#}");
    assert_eq!(
        events(&order),
        [
            "ORDER_CREATED",
            "ORDER_PREPARED",
            "ORDER_BILLED",
            "ORDER_SHIPPED",
            "ORDER_DELIVERED",
            "ORDER_COMPLETED"
        ]
    );
    assert!(
        order["shipment"]["tracking_number"]
            .as_str()
            .unwrap()
            .starts_with("SIM")
    );
    assert_eq!(order["payment"]["amount"]["amount"], 2 * 8999 + 3 * 2499);
    assert_eq!(shop.provider.captures(), 1);
    assert_eq!(shop.provider.captured_amount(), 2 * 8999 + 3 * 2499);
    assert_eq!(
        shop.stock("p-1001").await,
        (on_hand_before - 2, 0),
        "stock committed"
    );

    // The cart was emptied by the checkout.
    let cart: Value = shop
        .get("alice", "/v1/carts/alice")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cart["lines"], json!([]));

    // Orders list, newest first.
    let list: Value = shop.get("alice", "/v1/orders").await.json().await.unwrap();
    assert_eq!(list["orders"][0]["order_id"], id);

    // Notifications went through the outbox to the file notifier.
    shop.eventually("notifications", || shop.notifications().len() >= 3)
        .await;
    let templates: Vec<String> = shop
        .notifications()
        .iter()
        .filter(|n| n["order_id"] == id)
        .map(|n| n["template"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        templates,
        ["order_confirmed", "order_shipped", "order_delivered"]
    );

    // Clickstream: three add_to_cart, then one purchase per line, all valid events.
    shop.eventually("purchase events", || {
        shop.sink.of_type("purchase").len() == 2
    })
    .await;
    let adds = shop.sink.of_type("add_to_cart");
    assert_eq!(adds.len(), 3);
    assert_eq!(adds[0]["user_id"], "alice");
    assert_eq!(adds[0]["price"], json!({"amount": 8999, "currency": "USD"}));
    for r in shop.sink.records.lock().unwrap().iter() {
        assert_eq!(r.partition_key, "alice");
        recstream_ingest::decode::decode(&r.data).expect("a valid clickstream event");
    }
    let purchases = shop.sink.of_type("purchase");
    assert_eq!(purchases[0]["product_id"], "p-1001");
    assert_eq!(purchases[0]["quantity"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_cards_cancel_the_order_and_release_the_stock() {
    let shop = Shop::start().await;
    let before = shop.stock("p-1005").await;
    for (user, card, reason) in [
        ("bob", "4000000000000002", "generic_decline"),
        ("carol", "4000000000009995", "insufficient_funds"),
    ] {
        assert_eq!(shop.add(user, "p-1005", 2).await.status(), 200);
        let r = shop
            .checkout(user, "k1", &json!({"payment_method": card}))
            .await;
        assert_eq!(r.status(), 202);
        let id = r.json::<Value>().await.unwrap()["order_id"]
            .as_str()
            .unwrap()
            .to_string();
        let order = shop.settle(user, &id).await;
        assert_eq!(order["status"], "cancelled", "{order:#}");
        assert_eq!(order["cancel_reason"], reason);
        let ev = events(&order);
        assert!(
            ev.starts_with(&[
                "ORDER_CREATED".into(),
                "ORDER_PREPARED".into(),
                "PAYMENT_FAIL".into()
            ]),
            "{ev:?}"
        );
        // The release is recorded in the order's history once inventory has done it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !events(&shop.order(user, &id).await).contains(&"STOCK_RELEASED".to_string()) {
            assert!(std::time::Instant::now() < deadline, "stock not released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(shop.stock("p-1005").await, before, "stock released");
        // The cart is as it was before the checkout: the shopper retries with another card.
        let cart: Value = shop
            .get(user, &format!("/v1/carts/{user}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(cart["lines"][0]["product_id"], "p-1005", "{cart}");
        assert_eq!(cart["lines"][0]["quantity"], 2, "{cart}");
    }
    assert_eq!(shop.provider.captures(), 0, "nothing was charged");
    shop.eventually("cancel notifications", || {
        shop.notifications()
            .iter()
            .filter(|n| n["template"] == "order_cancelled")
            .count()
            == 2
    })
    .await;
    assert!(shop.sink.of_type("purchase").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_checkouts_for_the_last_unit_sell_it_once() {
    let shop = Shop::start().await; // p-1011 has exactly one unit
    assert_eq!(shop.stock("p-1011").await, (1, 0));
    let users: Vec<String> = (0..20).map(|i| format!("racer-{i}")).collect();
    for u in &users {
        assert_eq!(shop.add(u, "p-1011", 1).await.status(), 200);
    }
    let shop = std::sync::Arc::new(shop);
    let mut tasks = Vec::new();
    for u in users.clone() {
        let shop = shop.clone();
        tasks.push(tokio::spawn(async move {
            let r = shop.checkout(&u, &format!("race-{u}"), &visa()).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (u, status, body)
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        let (u, status, body) = t.await.unwrap();
        match status {
            202 => orders.push((u, body["order_id"].as_str().unwrap().to_string())),
            // Checked after the unit was already reserved: refused up front.
            409 => assert_eq!(body["error"]["code"], "cart_changed", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!orders.is_empty());
    let mut completed = 0;
    for (u, id) in &orders {
        let o = shop.settle(u, id).await;
        match o["status"].as_str().unwrap() {
            "completed" => completed += 1,
            "cancelled" => assert!(
                o["cancel_reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("out_of_stock"),
                "{o:#}"
            ),
            other => panic!("{other}: {o:#}"),
        }
    }
    assert_eq!(completed, 1, "exactly one order gets the last unit");
    assert_eq!(shop.provider.captures(), 1, "exactly one charge");
    assert_eq!(
        shop.stock("p-1011").await,
        (0, 0),
        "never negative, nothing left reserved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_checkout_makes_one_order_and_one_charge() {
    let shop = Shop::start().await;
    assert_eq!(shop.add("dave", "p-1003", 1).await.status(), 200);
    let first = shop.checkout("dave", "same-key", &visa()).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    // The client did not see the answer and retries, even after the cart is gone.
    for _ in 0..3 {
        let again = shop.checkout("dave", "same-key", &visa()).await;
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    // Same key, different request: Stripe's 4xx with a clear error.
    let other = shop
        .checkout(
            "dave",
            "same-key",
            &json!({"payment_method": "pm_card_mastercard"}),
        )
        .await;
    assert_eq!(other.status(), 422);
    let err: Value = other.json().await.unwrap();
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    // A missing key is refused before anything happens.
    let r = shop
        .http
        .post(shop.url("/v1/checkout"))
        .bearer_auth(shop.token("dave"))
        .json(&visa())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let id = first["order_id"].as_str().unwrap();
    assert_eq!(shop.settle("dave", id).await["status"], "completed");
    let list: Value = shop.get("dave", "/v1/orders").await.json().await.unwrap();
    assert_eq!(list["orders"].as_array().unwrap().len(), 1, "one order");
    assert_eq!(shop.provider.captures(), 1, "one charge");
    assert_eq!(shop.provider.intents(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_execute_once() {
    let shop = std::sync::Arc::new(Shop::start().await);
    assert_eq!(shop.add("erin", "p-1004", 2).await.status(), 200);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let shop = shop.clone();
        tasks.push(tokio::spawn(async move {
            let r = shop.checkout("erin", "burst-key", &visa()).await;
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            202 => {
                ids.insert(body["order_id"].as_str().unwrap().to_string());
            }
            409 => assert_eq!(body["error"]["code"], "idempotency_in_flight", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "every 202 names the same order");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(shop.settle("erin", &id).await["status"], "completed");
    let list: Value = shop.get("erin", "/v1/orders").await.json().await.unwrap();
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);
    assert_eq!(shop.provider.captures(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_need_a_fresh_valid_signature_and_duplicates_are_dropped() {
    let shop = Shop::start().await;
    let body = json!({"id": "evt_test_1", "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_1", "object": "payment_intent", "metadata": {"order_id": "ord_x"}}}})
    .to_string();
    let post = |sig: Option<String>, body: String| {
        let mut rb = shop
            .http
            .post(shop.url("/v1/payments/webhook"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = sig {
            rb = rb.header("Stripe-Signature", s);
        }
        rb.send()
    };
    let now = now_s() as i64;
    let good = signature_header(WEBHOOK_SECRET, now, body.as_bytes());
    let r = post(Some(good.clone()), body.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"received": true, "duplicate": false})
    );
    let r = post(Some(good.clone()), body.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["duplicate"], true);

    // Several v1 values (a secret being rolled): one valid is enough.
    let rolled = format!(
        "t={now},v1={},v1={}",
        "ab".repeat(32),
        &good[good.find("v1=").unwrap() + 3..]
    );
    assert_eq!(
        post(Some(rolled), body.clone()).await.unwrap().status(),
        200
    );

    let bad = format!("t={now},v1={}", "00".repeat(32));
    let stale = signature_header(WEBHOOK_SECRET, now - 301, body.as_bytes());
    let wrong_secret = signature_header("whsec_other", now, body.as_bytes());
    let tampered_body = body.replace("evt_test_1", "evt_test_2");
    for (sig, b) in [
        (Some(bad), body.clone()),
        (Some(stale), body.clone()),
        (Some(wrong_secret), body.clone()),
        (Some(good.clone()), tampered_body),
        (None, body.clone()),
        (Some("t=abc,v1=zz".into()), body.clone()),
    ] {
        let r = post(sig.clone(), b).await.unwrap();
        assert_eq!(r.status(), 400, "{sig:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_only_their_own_cart_and_orders() {
    let shop = Shop::start().await;
    assert_eq!(shop.add("frank", "p-1002", 1).await.status(), 200);
    // Another user's token on frank's cart: 403, for every cart verb.
    let mallory = shop.token("mallory");
    let cart = shop.url("/v1/carts/frank");
    let c = &shop.http;
    for req in [
        c.get(&cart),
        c.delete(&cart),
        c.post(format!("{cart}/items"))
            .json(&json!({"product_id": "p-1002"})),
        c.put(format!("{cart}/items/p-1002"))
            .json(&json!({"quantity": 5})),
        c.delete(format!("{cart}/items/p-1002")),
    ] {
        let r = req.bearer_auth(&mallory).send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["code"],
            "forbidden"
        );
    }
    // No token, an expired one, a forged one: 401 with a WWW-Authenticate challenge.
    let r = c.get(&cart).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        c.get(&cart)
            .bearer_auth(token_for("frank", -3600))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let forged = token_for("frank", 600);
    let forged = format!("{}x", &forged[..forged.len() - 1]);
    assert_eq!(
        c.get(&cart)
            .bearer_auth(forged)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // RS256 against the JWKS (as Cognito issues them) works for the owner.
    let r = c
        .get(&cart)
        .bearer_auth(rs256_token("frank"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&cart)
        .bearer_auth(rs256_token("mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Orders: the owner sees it, others get 403.
    let id = shop
        .checkout("frank", "k", &visa())
        .await
        .json::<Value>()
        .await
        .unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        shop.get("frank", &format!("/v1/orders/{id}"))
            .await
            .status(),
        200
    );
    assert_eq!(
        shop.get("mallory", &format!("/v1/orders/{id}"))
            .await
            .status(),
        403
    );
    assert_eq!(
        shop.get("mallory", "/v1/orders/ord_nope").await.status(),
        404
    );
    // Mallory's own order list does not show frank's order.
    let list: Value = shop
        .get("mallory", "/v1/orders")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["orders"], json!([]));
    // Paging parameters are bounded and checked: limit 1..=100, `after` one of the
    // caller's own orders.
    for q in [
        "limit=0",
        "limit=101",
        "limit=1000",
        "after=zzz",
        "after=%E2%80%AE",
        &format!("after={id}"),
    ] {
        let r = shop.get("mallory", &format!("/v1/orders?{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{q}: {body}");
    }
    let page: Value = shop
        .get("frank", &format!("/v1/orders?limit=1&after={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["orders"], json!([]), "nothing after the only order");
    let page: Value = shop
        .get("frank", "/v1/orders?limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["orders"][0]["order_id"], json!(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_survives_a_consumer_crash_without_charging_twice() {
    let mut shop = Shop::start().await;
    // The provider captures the money, then the answer never arrives: the payment
    // consumer is stuck after the side effect and before its commit.
    shop.provider.set_fault(Some(Fault {
        op: Op::Capture,
        kind: FaultKind::HangAfter,
        times: 1,
    }));
    assert_eq!(shop.add("gina", "p-1007", 2).await.status(), 200);
    let id = shop
        .checkout("gina", "k", &visa())
        .await
        .json::<Value>()
        .await
        .unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let provider = shop.provider.clone();
    shop.eventually("the capture", || provider.captures() == 1)
        .await;
    // The orders consumer records ORDER_PREPARED on its own schedule (the payment
    // consumer may capture first): wait for it rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while shop.order("gina", &id).await["status"] != "prepared" {
        assert!(std::time::Instant::now() < deadline, "order never prepared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Crash: every consumer, the relay and the timers die where they are.
    shop.workers.take().unwrap().kill().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        shop.order("gina", &id).await["status"],
        "prepared",
        "nothing runs while down"
    );

    // Restart over the same embedded database.
    shop.workers = Some(shop.state.spawn_workers());
    let order = shop.settle("gina", &id).await;
    assert_eq!(order["status"], "completed", "{order:#}");
    assert_eq!(
        shop.provider.captures(),
        1,
        "the retry replayed the capture, no second charge"
    );
    assert_eq!(shop.provider.intents(), 1);
    let billed = events(&order)
        .iter()
        .filter(|e| *e == "ORDER_BILLED")
        .count();
    assert_eq!(billed, 1);
    shop.eventually("one purchase event per line", || {
        shop.sink.of_type("purchase").len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_billing_is_refunded() {
    let shop = Shop::start().await;
    assert_eq!(shop.add("hank", "p-1009", 1).await.status(), 200);
    let body = json!({"payment_method": "pm_card_visa",
        "shipping": {"name": "Hank", "line1": "Nowhere 1", "city": "Void", "postal_code": "00000", "country": "DE"}});
    let id = shop
        .checkout("hank", "k", &body)
        .await
        .json::<Value>()
        .await
        .unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let order = shop.settle("hank", &id).await;
    assert_eq!(order["status"], "refunded", "{order:#}");
    assert_eq!(
        events(&order),
        [
            "ORDER_CREATED",
            "ORDER_PREPARED",
            "ORDER_BILLED",
            "DELIVERY_FAILED",
            "ORDER_REFUNDED"
        ]
    );
    assert_eq!(order["refund"]["amount"]["amount"], 15900);
    assert_eq!((shop.provider.captures(), shop.provider.refunds()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_cancels_and_a_late_charge_is_refunded() {
    let shop = Shop::start_with(|c| c.reservation_ttl_ms = 150, None).await;
    let before = shop.stock("p-1010").await;
    // The provider is down, so payment keeps retrying while the reservation runs out.
    shop.provider.set_fault(Some(Fault {
        op: Op::Create,
        kind: FaultKind::FailBefore,
        times: 1_000_000,
    }));
    assert_eq!(shop.add("ivy", "p-1010", 1).await.status(), 200);
    let id = shop
        .checkout("ivy", "k", &visa())
        .await
        .json::<Value>()
        .await
        .unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = shop.order("ivy", &id).await;
        if o["status"] == "cancelled" {
            assert_eq!(o["cancel_reason"], "reservation_expired");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{o:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        shop.stock("p-1010").await,
        before,
        "stock released on expiry"
    );
    // The provider comes back and the charge goes through late: compensated by a refund.
    shop.provider.set_fault(None);
    let o = shop.settle("ivy", &id).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut o = o;
    while o["status"] != "refunded" {
        assert!(std::time::Instant::now() < deadline, "{o:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        o = shop.order("ivy", &id).await;
    }
    assert_eq!((shop.provider.captures(), shop.provider.refunds()), (1, 1));
    assert_eq!(
        shop.stock("p-1010").await,
        before,
        "the late charge took no stock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_operations_bounds_and_the_availability_sweep() {
    let products = seed(json!([
        {"id": "a", "name": "A", "category": "x", "price": {"amount": 1000, "currency": "USD"}, "stock": 10},
        {"id": "b", "name": "B", "price": {"amount": 250, "currency": "USD"}, "stock": 5},
        {"id": "c", "name": "C", "price": {"amount": 99, "currency": "USD"}, "stock": 5},
        {"id": "eur", "name": "E", "price": {"amount": 99, "currency": "EUR"}, "stock": 5}
    ]));
    let shop = Shop::start_with(|c| c.sweep_interval_ms = 60_000, Some(products)).await;
    let put = |p: &str, q: u32| {
        shop.http
            .put(shop.url(&format!("/v1/carts/jo/items/{p}")))
            .bearer_auth(shop.token("jo"))
            .json(&json!({"quantity": q}))
            .send()
    };
    assert_eq!(shop.add("jo", "a", 2).await.status(), 200);
    assert_eq!(put("b", 3).await.unwrap().status(), 200);
    let cart: Value = put("a", 5).await.unwrap().json().await.unwrap();
    assert_eq!(cart["subtotal"]["amount"], 5 * 1000 + 3 * 250);
    // Bounds: more than 99, more than in stock, zero on add, unknown product, other currency.
    assert_eq!(put("a", 100).await.unwrap().status(), 422);
    assert_eq!(put("a", 11).await.unwrap().status(), 409);
    assert_eq!(shop.add("jo", "a", 0).await.status(), 422);
    assert_eq!(shop.add("jo", "nope", 1).await.status(), 404);
    assert_eq!(shop.add("jo", "eur", 1).await.status(), 409);
    let r = shop
        .http
        .post(shop.url("/v1/carts/jo/items"))
        .bearer_auth(shop.token("jo"))
        .json(&json!({"product_id": "a", "quantity": -1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = shop
        .http
        .post(shop.url("/v1/carts/jo/items"))
        .bearer_auth(shop.token("jo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Set 0 deletes; delete of a missing line is 404.
    let cart: Value = put("b", 0).await.unwrap().json().await.unwrap();
    assert_eq!(cart["lines"].as_array().unwrap().len(), 1);
    let del = |p: &str| {
        shop.http
            .delete(shop.url(&format!("/v1/carts/jo/items/{p}")))
            .bearer_auth(shop.token("jo"))
            .send()
    };
    assert_eq!(del("b").await.unwrap().status(), 404);
    assert_eq!(shop.add("jo", "c", 2).await.status(), 200);

    // The catalog moves: a reprice, a sell-out, a delisting.
    shop.state
        .catalog()
        .set_price("a", recstream_ingest::Money::new(1200, "USD"))
        .await
        .unwrap();
    shop.state.catalog().set_on_hand("c", 0).await.unwrap();
    assert_eq!(shop.state.sweep_carts().await.unwrap(), 1);
    let cart: Value = shop.get("jo", "/v1/carts/jo").await.json().await.unwrap();
    let kinds: Vec<&str> = cart["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["repriced", "out_of_stock"], "{cart:#}");
    assert_eq!(cart["notices"][0]["new"]["amount"], 1200);
    assert_eq!(cart["lines"][0]["unit_price"]["amount"], 1200);
    assert_eq!(cart["lines"][1]["flag"]["kind"], "out_of_stock");
    assert_eq!(cart["checkout_ready"], false);
    // Notices are reported once.
    let cart: Value = shop.get("jo", "/v1/carts/jo").await.json().await.unwrap();
    assert_eq!(cart["notices"], json!([]));
    // Checkout refuses a cart that needs review.
    let r = shop.checkout("jo", "k1", &visa()).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "cart_needs_review"
    );
    // Delisting removes the line on the next sweep.
    shop.state.catalog().set_active("c", false).await.unwrap();
    shop.state.sweep_carts().await.unwrap();
    let cart: Value = shop.get("jo", "/v1/carts/jo").await.json().await.unwrap();
    assert_eq!(cart["notices"][0]["kind"], "removed");
    assert_eq!(cart["lines"].as_array().unwrap().len(), 1);
    // A price change between the last read and checkout is caught at checkout.
    shop.state
        .catalog()
        .set_price("a", recstream_ingest::Money::new(1100, "USD"))
        .await
        .unwrap();
    let r = shop.checkout("jo", "k2", &visa()).await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "cart_changed"
    );
    let r = shop.checkout("jo", "k2", &visa()).await;
    assert_eq!(
        r.status(),
        202,
        "the same key works once the cart was reviewed"
    );
    // Clear.
    assert_eq!(shop.add("jo", "b", 1).await.status(), 200);
    let r = shop
        .http
        .delete(shop.url("/v1/carts/jo"))
        .bearer_auth(shop.token("jo"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["lines"], json!([]));
    shop.eventually("remove_from_cart events", || {
        shop.sink.of_type("remove_from_cart").len() == 2
    })
    .await;
    // Raw card numbers other than Stripe's test cards never get in.
    assert_eq!(shop.add("jo", "b", 1).await.status(), 200);
    let r = shop
        .checkout("jo", "k3", &json!({"payment_method": "5105105105105100"}))
        .await;
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap().contains("5105"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_browsing_is_public() {
    let shop = Shop::start().await;
    let r = shop
        .http
        .get(shop.url("/v1/catalog/products?limit=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["products"].as_array().unwrap().len(), 5);
    let next = page["next_after"].as_str().unwrap();
    let r: Value = shop
        .http
        .get(shop.url(&format!("/v1/catalog/products?after={next}&limit=100")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["products"].as_array().unwrap().len(), 7);
    let p: Value = shop
        .http
        .get(shop.url("/v1/catalog/products/p-1012"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["available"], 0);
    assert_eq!(
        shop.http
            .get(shop.url("/v1/catalog/products/zzz"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(shop.add("kim", "p-1012", 1).await.status(), 409, "sold out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_into_the_api_router() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let shop = Shop::start().await;
    let features = Arc::new(
        recstream_features::EmbeddedStore::open(
            shop.dir.path().join("features.redb"),
            recstream_features::FeatureConfig::default(),
        )
        .unwrap(),
    );
    let cold = Arc::new(recstream_scoring::InProcessCache::new());
    let recommender = Arc::new(recstream_scoring::Recommender::new(
        features,
        cold,
        recstream_scoring::ScoringConfig::default(),
    ));
    let api = recstream_serving::AppState {
        recommender,
        collector: shop.sink.clone(),
        access: Arc::new(recstream_serving::Access::new(
            &recstream_serving::AccessConfig::default(),
            Some(shop.state.authenticator()),
        )),
        ready: Arc::new(AtomicBool::new(true)),
        max_record_bytes: 64 * 1024,
        event_time: recstream_serving::EventTimeBounds::default(),
        served: None,
    };
    // The one line the binary needs.
    let app = recstream_serving::router(api).merge(recstream_commerce::routes(shop.state.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/v1/catalog/products"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .get(format!("{base}/v1/carts/zoe"))
        .bearer_auth(shop.token("zoe"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base}/v1/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_finishes_the_saga_from_disk() {
    use std::sync::Arc;

    use recstream_commerce::{
        CommerceConfig, CommerceState, OrderStatus, Secret, Secrets, SimulatedProvider,
    };

    let dir = tempfile::tempdir().unwrap();
    // The provider stands in for Stripe: it outlives our process.
    let provider = Arc::new(SimulatedProvider::new());
    let sink = Arc::new(RecordingSink::default());
    let open = || {
        CommerceState::builder(CommerceConfig::for_tests(dir.path()), sink.clone())
            .secrets(Secrets {
                jwt_hs256: Some(Secret::new(JWT_SECRET)),
                ..Default::default()
            })
            .provider(provider.clone())
            .build()
    };
    let state = open().await.unwrap();
    let workers = state.spawn_workers();
    provider.set_fault(Some(Fault {
        op: Op::Capture,
        kind: FaultKind::HangAfter,
        times: 1,
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = recstream_commerce::routes(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/carts/lea/items"))
        .bearer_auth(token_for("lea", 600))
        .json(&json!({"product_id": "p-1003", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/v1/checkout"))
        .bearer_auth(token_for("lea", 600))
        .header("Idempotency-Key", "restart-1")
        .json(&visa())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while provider.captures() == 0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The process dies: workers killed mid-payment, server gone, state dropped.
    workers.kill().await;
    drop(http);
    let _ = stop.send(());
    server.await.unwrap();
    drop(state);

    // A new process opens the same database file (once the old one has let go of it).
    let mut tries = 0;
    let state = loop {
        match open().await {
            Ok(s) => break s,
            Err(_) if tries < 200 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    provider.set_fault(None);
    let _workers = state.spawn_workers();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = state.order(&id).await.unwrap().unwrap();
        if o.status == OrderStatus::Completed {
            break;
        }
        assert!(!o.status.is_final(), "{o:?}");
        assert!(std::time::Instant::now() < deadline, "{o:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(provider.captures(), 1, "no second charge after the restart");
    assert_eq!(provider.intents(), 1);
    let stock = state.catalog().stock("p-1003").await.unwrap().unwrap();
    assert_eq!((stock.on_hand, stock.reserved), (73, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_fetched_from_a_url_as_cognito_publishes_it() {
    use recstream_commerce::{CommerceConfig, CommerceState, Secrets, routes};
    use std::sync::Arc;

    // The identity provider: a JWKS document over HTTP on loopback.
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/.well-known/jwks.json", idp.local_addr().unwrap());
    let doc = jwks();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || async move { axum::Json(doc) }),
        );
        axum::serve(idp, app).await.unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CommerceConfig::for_tests(dir.path());
    cfg.auth.jwks_url = Some(jwks_url);
    let sink = Arc::new(RecordingSink::default());
    // No HS256 secret and no in-memory JWKS: the URL is the only way to verify tokens.
    let state = CommerceState::builder(cfg.clone(), sink)
        .secrets(Secrets::default())
        .build()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = routes(state);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = reqwest::Client::new();
    let cart = format!("{base}/v1/carts/frank");
    let r = c
        .get(&cart)
        .bearer_auth(rs256_token("frank"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(&cart)
        .bearer_auth(token_for("frank", 600))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "HS256 is not configured here");

    // An unreachable JWKS URL is a clear start-up error.
    cfg.auth.jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
    let err = CommerceState::builder(cfg, Arc::new(RecordingSink::default()))
        .secrets(Secrets::default())
        .build()
        .await
        .err()
        .expect("a JWKS that cannot be fetched fails the start");
    assert!(err.to_string().contains("JWKS"), "{err}");
}

/// The catalog's admin endpoints: only a token in an admin group may create or update a
/// product, set its stock or deactivate it; what they write is what carts see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_administration_needs_the_admin_role() {
    let shop = Shop::start().await;
    let admin = token_with_groups("root", &["admin"]);
    let marketing = token_with_groups("mia", &["marketing"]);
    let product = json!({"title": "Lamp", "category": "home.light",
        "price": {"amount": 1999, "currency": "USD"}, "stock": 2});
    let put = |token: Option<String>, path: &str, body: Value| {
        let mut r = shop.http.put(shop.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    // No token, a shopper, marketing: refused with a JSON error.
    for (token, status) in [
        (None, 401),
        (Some(shop.token("alice")), 403),
        (Some(marketing.clone()), 403),
    ] {
        let r = put(
            token.clone(),
            "/v1/catalog/products/lamp-1",
            product.clone(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
        let r = shop
            .http
            .post(shop.url("/v1/catalog/products/p-1001/deactivate"))
            .bearer_auth(token.unwrap_or_default())
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 401 | 403));
    }
    assert_eq!(
        shop.http
            .get(shop.url("/v1/catalog/products/lamp-1"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "nothing was written"
    );

    // The admin creates, a shopper can buy; stock 0 and deactivation are seen by carts.
    let r = put(
        Some(admin.clone()),
        "/v1/catalog/products/lamp-1",
        product.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["available"], 2);
    assert_eq!(shop.add("alice", "lamp-1", 1).await.status(), 200);
    let r = put(
        Some(admin.clone()),
        "/v1/catalog/products/lamp-1",
        product.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "an update");
    let r = put(
        Some(admin.clone()),
        "/v1/catalog/products/lamp-1/stock",
        json!({"on_hand": 0}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["available"], 0);
    assert_eq!(shop.add("bob", "lamp-1", 1).await.status(), 409, "sold out");
    let r = put(
        Some(admin.clone()),
        "/v1/catalog/products/nope/stock",
        json!({"on_hand": 3}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let r = shop
        .http
        .post(shop.url("/v1/catalog/products/p-1001/deactivate"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["active"], false);
    assert_ne!(shop.add("carol", "p-1001", 1).await.status(), 200);
    // Bad bodies are 4xx JSON.
    let r = put(
        Some(admin),
        "/v1/catalog/products/lamp-2",
        json!({"title": "", "price": {"amount": -1, "currency": "USD"}, "stock": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
}
