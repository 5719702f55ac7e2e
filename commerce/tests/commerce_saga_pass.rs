//! The saga run on demand (`CommerceState::run_saga_pass`), as the `saga` Lambda function
//! runs it: no background relay, consumers or timers. A checkout stays `created` until a
//! pass runs; passes take it to `completed` with the same effects as the background
//! workers (stock committed, one purchase event per line, one notification per
//! template); a pass with nothing to do moves nothing; two passes racing each other
//! apply every saga event once.

mod commerce_support;

use std::collections::HashMap;
use std::time::Duration;

use commerce_support::*;
use recstream_commerce::SagaPass;
use serde_json::Value;

const BUDGET: Duration = Duration::from_secs(10);

async fn checkout(shop: &Shop, user: &str) -> String {
    assert_eq!(shop.add(user, "p-1005", 2).await.status(), 200);
    let r = shop.checkout(user, &format!("k-{user}"), &visa()).await;
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn history(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap().to_string())
        .collect()
}

/// Runs passes (as the stream and the schedule would invoke the function) until the
/// order is final; returns the passes.
async fn passes_until_final(shop: &Shop, user: &str, order_id: &str) -> Vec<SagaPass> {
    let mut passes = Vec::new();
    for _ in 0..10 {
        passes.push(shop.state.run_saga_pass(BUDGET).await.unwrap());
        let o = shop.order(user, order_id).await;
        if ["completed", "cancelled", "refunded"].contains(&o["status"].as_str().unwrap()) {
            return passes;
        }
    }
    panic!(
        "order {order_id} not final after 10 passes: {:#}",
        shop.order(user, order_id).await
    );
}

fn no_duplicates(what: &str, items: &[String]) {
    let mut seen = HashMap::new();
    for i in items {
        *seen.entry(i).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        dups.is_empty(),
        "{what} applied twice: {dups:?} in {items:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_take_an_order_to_completed_and_an_idle_pass_moves_nothing() {
    let shop = Shop::start_on_demand().await;
    let (on_hand, _) = shop.stock("p-1005").await;
    let id = checkout(&shop, "ada").await;

    // Nothing runs the saga in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shop.order("ada", &id).await["status"], "created");

    let passes = passes_until_final(&shop, "ada", &id).await;
    assert!(
        passes[0].relayed > 0 && passes[0].consumed > 0,
        "{passes:?}"
    );
    assert!(passes.iter().all(|p| p.drained), "{passes:?}");
    let order = shop.order("ada", &id).await;
    assert_eq!(order["status"], "completed", "{order:#}");
    no_duplicates("saga event", &history(&order));
    assert_eq!(shop.stock("p-1005").await, (on_hand - 2, 0));
    // The purchase reached the clickstream once (relayed from the outbox by a pass).
    let purchases = shop.sink.of_type("purchase");
    assert_eq!(purchases.len(), 1, "{purchases:?}");

    // Idle: nothing to relay, nothing to consume.
    let idle = shop.state.run_saga_pass(BUDGET).await.unwrap();
    assert_eq!((idle.relayed, idle.consumed, idle.drained), (0, 0, true));
    assert_eq!(shop.order("ada", &id).await, order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_passes_apply_every_event_once() {
    let shop = Shop::start_on_demand().await;
    let (on_hand, _) = shop.stock("p-1005").await;
    let a = checkout(&shop, "ada").await;
    let b = checkout(&shop, "bob").await;

    // Two invocations at once (a stream batch and the schedule), several times over.
    for _ in 0..6 {
        let (x, y) = tokio::join!(
            shop.state.run_saga_pass(BUDGET),
            shop.state.run_saga_pass(BUDGET)
        );
        x.unwrap();
        y.unwrap();
    }
    for (user, id) in [("ada", &a), ("bob", &b)] {
        let order = shop.order(user, id).await;
        assert_eq!(order["status"], "completed", "{order:#}");
        no_duplicates("saga event", &history(&order));
    }
    assert_eq!(shop.stock("p-1005").await, (on_hand - 4, 0));
    // The clickstream leg is at least once (two relays may both deliver a row before
    // either deletes it); its stable event ids let the processor drop the copy.
    let purchases: std::collections::BTreeSet<String> = shop
        .sink
        .of_type("purchase")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(purchases.len(), 2, "{purchases:?}");
}
