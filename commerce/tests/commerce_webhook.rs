//! Asynchronous payment confirmation (3-D Secure) over real HTTP on 127.0.0.1:0: a card
//! that requires authentication leaves the order waiting; a signed Stripe webhook
//! `payment_intent.succeeded` bills it, `payment_intent.payment_failed` compensates it;
//! deliveries are deduplicated by event id and unsigned ones change nothing.

mod commerce_support;

use std::time::{Duration, Instant};

use commerce_support::*;
use recstream_commerce::saga::payments::{PaymentRecord, PaymentStatus, payment_key};
use recstream_commerce::store::get_json;
use recstream_commerce::webhook::signature_header;
use serde_json::{Value, json};

/// Stripe's 3-D Secure 2 test card (`pm_card_threeDSecure2Required`).
const THREE_DS_CARD: &str = "4000002760003184";

fn events(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap().to_string())
        .collect()
}

async fn payment(shop: &Shop, order_id: &str) -> Option<PaymentRecord> {
    let store = shop.state.store();
    get_json::<PaymentRecord>(store.as_ref(), "payment", &payment_key(order_id))
        .await
        .unwrap()
        .map(|(r, _)| r)
}

/// Checks out `user`'s cart (two of p-1005) with the 3-D Secure card; waits until the
/// payment waits for the customer; returns (order id, payment intent id).
async fn pending_checkout(shop: &Shop, user: &str) -> (String, String) {
    assert_eq!(shop.add(user, "p-1005", 2).await.status(), 200);
    let r = shop
        .checkout(user, "k1", &json!({"payment_method": THREE_DS_CARD}))
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The orders and payment consumers run independently: wait for both.
        let order = shop.order(user, &id).await;
        if let Some(p) = payment(shop, &id).await
            && p.status == PaymentStatus::RequiresAction
            && order["status"] == "prepared"
        {
            let intent = p.intent_id.expect("intent id");
            // The owner learns how to complete the challenge, as from Stripe's API.
            let action = &order["payment_action"];
            assert_eq!(action["status"], "requires_action", "{order:#}");
            assert_eq!(action["payment_intent_id"], intent.as_str(), "{order:#}");
            assert!(
                action["client_secret"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&format!("{intent}_secret_"))),
                "{order:#}"
            );
            return (id, intent);
        }
        assert!(
            order["status"] != "cancelled",
            "a 3-D Secure payment must wait, not fail: {order:#}"
        );
        assert!(Instant::now() < deadline, "payment never required action");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn intent_event(event_id: &str, kind: &str, intent: &str, order_id: &str) -> String {
    let mut object = json!({"id": intent, "object": "payment_intent",
        "metadata": {"order_id": order_id}});
    if kind == "payment_intent.payment_failed" {
        object["status"] = json!("requires_payment_method");
        object["last_payment_error"] = json!({"code": "payment_intent_authentication_failure"});
    } else {
        object["status"] = json!("requires_capture");
    }
    json!({"id": event_id, "object": "event", "type": kind, "data": {"object": object}}).to_string()
}

async fn post_webhook(shop: &Shop, sig: Option<String>, body: &str) -> (u16, Value) {
    let mut rb = shop
        .http
        .post(shop.url("/v1/payments/webhook"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(s) = sig {
        rb = rb.header("Stripe-Signature", s);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn signed(body: &str) -> Option<String> {
    Some(signature_header(
        WEBHOOK_SECRET,
        now_s() as i64,
        body.as_bytes(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ds_waits_then_a_signed_succeeded_webhook_bills_once() {
    let shop = Shop::start().await;
    let (id, intent) = pending_checkout(&shop, "dave").await;
    assert_eq!(shop.provider.captures(), 0);

    // The shopper authenticates; Stripe then sends the webhook.
    assert!(shop.provider.authenticate(&intent, true).is_some());
    let body = intent_event("evt_3ds_ok", "payment_intent.succeeded", &intent, &id);

    // Unsigned and badly signed deliveries: 400 JSON, nothing moves.
    let (s, b) = post_webhook(&shop, None, &body).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "bad_request", "{b}");
    let bad = format!("t={},v1={}", now_s(), "00".repeat(32));
    let (s, b) = post_webhook(&shop, Some(bad), &body).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["code"].is_string(), "{b}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shop.order("dave", &id).await["status"], "prepared");
    assert_eq!(shop.provider.captures(), 0);

    // The signed one bills the order, through the same saga as a synchronous success.
    let (s, b) = post_webhook(&shop, signed(&body), &body).await;
    assert_eq!(
        (s, &b),
        (200, &json!({"received": true, "duplicate": false}))
    );
    // The same event again, and a second `succeeded` event for the same intent: no
    // second transition, no second capture.
    let (s, b) = post_webhook(&shop, signed(&body), &body).await;
    assert_eq!((s, b["duplicate"].clone()), (200, json!(true)));
    let again = intent_event("evt_3ds_ok_2", "payment_intent.succeeded", &intent, &id);
    let (s, b) = post_webhook(&shop, signed(&again), &again).await;
    assert_eq!((s, b["duplicate"].clone()), (200, json!(false)));

    let order = shop.settle("dave", &id).await;
    assert_eq!(order["status"], "completed", "{order:#}");
    assert!(order.get("payment_action").is_none(), "{order:#}");
    let ev = events(&order);
    assert_eq!(
        ev.iter().filter(|e| *e == "ORDER_BILLED").count(),
        1,
        "{ev:?}"
    );
    assert_eq!(shop.provider.captures(), 1);
    assert_eq!(
        payment(&shop, &id).await.unwrap().status,
        PaymentStatus::Captured
    );
    // A late `payment_failed` for a billed order changes nothing.
    let late = intent_event(
        "evt_3ds_late",
        "payment_intent.payment_failed",
        &intent,
        &id,
    );
    assert_eq!(post_webhook(&shop, signed(&late), &late).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shop.order("dave", &id).await["status"], "completed");
    assert_eq!(
        payment(&shop, &id).await.unwrap().status,
        PaymentStatus::Captured
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_webhook_compensates_and_restores_the_cart() {
    let shop = Shop::start().await;
    let before = shop.stock("p-1005").await;
    let (id, intent) = pending_checkout(&shop, "erin").await;
    assert!(shop.provider.authenticate(&intent, false).is_some());
    let body = intent_event(
        "evt_3ds_fail",
        "payment_intent.payment_failed",
        &intent,
        &id,
    );
    let (s, _) = post_webhook(&shop, signed(&body), &body).await;
    assert_eq!(s, 200);
    let order = shop.settle("erin", &id).await;
    assert_eq!(order["status"], "cancelled", "{order:#}");
    assert_eq!(
        order["cancel_reason"],
        "payment_intent_authentication_failure"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(&shop.order("erin", &id).await).contains(&"STOCK_RELEASED".to_string()) {
        assert!(Instant::now() < deadline, "stock not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shop.stock("p-1005").await, before, "stock released");
    let cart: Value = shop
        .get("erin", "/v1/carts/erin")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cart["lines"][0]["product_id"], "p-1005", "{cart}");
    assert_eq!(cart["lines"][0]["quantity"], 2, "{cart}");
    // A late `succeeded` for the cancelled order changes nothing and captures nothing.
    let late = intent_event("evt_3ds_late_ok", "payment_intent.succeeded", &intent, &id);
    assert_eq!(post_webhook(&shop, signed(&late), &late).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shop.order("erin", &id).await["status"], "cancelled");
    assert_eq!(shop.provider.captures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_for_an_unknown_intent_is_acknowledged() {
    let shop = Shop::start().await;
    for (evt, order) in [("evt_u1", "ord_nope"), ("evt_u2", "")] {
        let body = intent_event(evt, "payment_intent.succeeded", "pi_unknown", order);
        let (s, b) = post_webhook(&shop, signed(&body), &body).await;
        assert_eq!((s, b), (200, json!({"received": true, "duplicate": false})));
    }
    assert_eq!(shop.provider.captures(), 0);
}
