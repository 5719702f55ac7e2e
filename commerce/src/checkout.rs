//! Checkout: turns the caller's cart into an order, once per `Idempotency-Key`.
//!
//! ```text
//!  POST /v1/checkout  Idempotency-Key: k  {"payment_method": "pm_card_visa", "shipping": {…}}
//!    ─► validate body, normalise the payment method (never a raw card number)
//!    ─► idempotency::begin ─► replay | 409 in flight | 422 reused | proceed
//!    ─► cart re-checked against the catalog (prices, stock) ─► 409 cart_changed if it moved
//!    ─► one transaction: order (created) + user index + cart deleted + ORDER_CREATED in the
//!       outbox + the stored 202 response under k
//!    ─► 202 {"order_id", "status": "created", "total", "links"}; the saga does the rest
//! ```

use axum::http::StatusCode;
use recstream_ingest::Money;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Ctx;
use super::auth::Principal;
use super::cart::{Cart, Carts, cart_key, subtotal};
use super::error::CommerceError;
use super::idempotency::{self, Begin, Lease};
use super::saga::orders::{HistoryEntry, Order, OrderStatus, order_key, user_order_key};
use super::saga::outbox::{self, OutboxMessage};
use super::saga::{Address, OrderLine, SagaEvent, SagaKind};
use super::store::{Cond, Write, get_json};

/// Checkouts by outcome (`created`, `replayed`, `rejected`).
pub const CHECKOUTS_TOTAL: &str = "recstream_commerce_checkouts_total";

/// The body of `POST /v1/checkout`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// A payment method id (`pm_…`), or a Stripe test card number in test mode.
    pub payment_method: String,
    /// Where to deliver (checked when given).
    #[serde(default)]
    pub shipping: Option<Address>,
    /// If given, checkout fails with 409 unless the cart total equals it.
    #[serde(default)]
    pub expected_total: Option<Money>,
}

/// The body of a `202` from `POST /v1/checkout`: the order is created, its saga runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutAccepted {
    /// The new order's id.
    pub order_id: String,
    /// Always `created` here; follow `links.order` for its progress.
    pub status: OrderStatus,
    /// What the order costs.
    pub total: Money,
    /// Where to read the order.
    pub links: CheckoutLinks,
}

/// Links of a [`CheckoutAccepted`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutLinks {
    /// `/v1/orders/{order_id}`.
    pub order: String,
}

/// The outcome as an HTTP status and JSON body (what is stored for replays).
pub struct Outcome {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: String,
    /// Whether it was replayed from an earlier request with the same idempotency key.
    pub replayed: bool,
}

/// Whether any string (or key) in `v` holds something that looks like a card number.
fn holds_card_number(v: &serde_json::Value) -> bool {
    use super::payment::contains_card_number as card;
    match v {
        serde_json::Value::String(s) => card(s),
        serde_json::Value::Array(a) => a.iter().any(holds_card_number),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| card(k) || holds_card_number(v)),
        serde_json::Value::Number(n) => card(&n.to_string()),
        _ => false,
    }
}

fn card_number_refused() -> CommerceError {
    CommerceError::Api(crate::ApiError::new(
        StatusCode::BAD_REQUEST,
        "card_number_refused",
        "card numbers are not accepted in any field; pay with a payment method id (pm_…) from Stripe.js",
    ))
}

fn check_address(a: &Address) -> Result<(), CommerceError> {
    let field = |name: &str, v: &str, max: usize| {
        if v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control) {
            Err(CommerceError::BadRequest(format!(
                "shipping.{name} must be 1 to {max} printable characters"
            )))
        } else {
            Ok(())
        }
    };
    field("name", &a.name, 200)?;
    field("line1", &a.line1, 200)?;
    if let Some(l2) = &a.line2
        && (l2.len() > 200 || l2.chars().any(char::is_control))
    {
        return Err(CommerceError::BadRequest(
            "shipping.line2 must be at most 200 printable characters".into(),
        ));
    }
    field("city", &a.city, 100)?;
    field("postal_code", &a.postal_code, 20)?;
    if a.country.len() != 2 || !a.country.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(CommerceError::BadRequest(
            "shipping.country must be an ISO 3166-1 alpha-2 code".into(),
        ));
    }
    Ok(())
}

pub(crate) async fn checkout(
    ctx: &std::sync::Arc<Ctx>,
    who: &Principal,
    key: Option<&str>,
    body: &[u8],
) -> Result<Outcome, CommerceError> {
    let key = key.ok_or_else(|| {
        CommerceError::BadRequest("checkout requires an Idempotency-Key header".into())
    })?;
    idempotency::check_key(key)?;
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| CommerceError::BadRequest(format!("malformed json: {e}")))?;
    // Nothing that looks like a card number is accepted in any field (the payment method
    // is checked by its own rule below, which maps the public test cards in test mode).
    if let Some(obj) = value.as_object()
        && obj
            .iter()
            .any(|(k, v)| k != "payment_method" && holds_card_number(v))
    {
        return Err(card_number_refused());
    }
    let req: CheckoutRequest = serde_json::from_value(value.clone()).map_err(|e| {
        // serde's message may quote the offending value: never echo a PAN.
        if holds_card_number(&value) {
            card_number_refused()
        } else {
            CommerceError::BadRequest(format!("invalid checkout request: {e}"))
        }
    })?;
    let pm =
        super::payment::normalize_payment_method(&req.payment_method, ctx.provider.test_mode())?;
    if let Some(a) = &req.shipping {
        check_address(a)?;
    }
    // The raw card number (if one was sent) must not reach storage: hash the normalised form.
    let mut hashed = value;
    hashed["payment_method"] = serde_json::Value::String(pm.clone());
    let hash = idempotency::request_hash("POST", "/v1/checkout", &who.user_id, &hashed);
    let lease = match idempotency::begin(ctx, &who.user_id, key, &hash).await? {
        Begin::Replay { status, body } => {
            metrics::counter!(CHECKOUTS_TOTAL, "result" => "replayed").increment(1);
            return Ok(Outcome {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body,
                replayed: true,
            });
        }
        Begin::Proceed(l) => l,
    };
    match place_order(ctx, who, &req, pm, &lease).await {
        Ok(body) => {
            metrics::counter!(CHECKOUTS_TOTAL, "result" => "created").increment(1);
            Ok(Outcome {
                status: StatusCode::ACCEPTED,
                body,
                replayed: false,
            })
        }
        Err(e) => {
            metrics::counter!(CHECKOUTS_TOTAL, "result" => "rejected").increment(1);
            let status = e.status();
            // Stripe keeps the outcome of requests that ran, except conflicts and
            // server-side trouble, which the client may retry with the same key.
            if status.is_client_error() && status != StatusCode::CONFLICT {
                let api = e.to_api();
                let body = serde_json::to_string(&crate::api_error::ErrorBody {
                    error: crate::api_error::ErrorDetail {
                        code: api.code.to_string(),
                        message: api.message,
                    },
                })
                .map_err(|e| CommerceError::Internal(format!("error body: {e}")))?;
                lease.complete(ctx, status.as_u16(), &body).await?;
            } else {
                lease.release(ctx).await;
            }
            Err(e)
        }
    }
}

async fn place_order(
    ctx: &std::sync::Arc<Ctx>,
    who: &Principal,
    req: &CheckoutRequest,
    payment_method: String,
    lease: &Lease,
) -> Result<String, CommerceError> {
    let carts = Carts::new(ctx.clone());
    let user = &who.user_id;
    for _ in 0..8 {
        let Some((mut cart, v)) =
            get_json::<Cart>(ctx.store.as_ref(), "cart", &cart_key(user)).await?
        else {
            return Err(CommerceError::unprocessable(
                "cart_empty",
                "the cart is empty",
            ));
        };
        if cart.lines.is_empty() {
            return Err(CommerceError::unprocessable(
                "cart_empty",
                "the cart is empty",
            ));
        }
        let now = ctx.clock.now_ms();
        if carts.reconcile(&mut cart, now).await? {
            // Show the change on the next read; the client reviews and retries.
            let w = Write::put_json(cart_key(user), &cart, Cond::Version(v))?;
            match ctx.store.transact(vec![w]).await {
                Ok(()) => {
                    return Err(CommerceError::conflict(
                        "cart_changed",
                        "prices or availability changed since the cart was last read; review the cart and retry",
                    ));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if cart.lines.iter().any(|l| l.flag.is_some()) {
            return Err(CommerceError::conflict(
                "cart_needs_review",
                "some items are out of stock or short; update the cart",
            ));
        }
        let total = subtotal(&cart.lines)?
            .ok_or_else(|| CommerceError::unprocessable("cart_empty", "the cart is empty"))?;
        if let Some(expected) = &req.expected_total
            && *expected != total
        {
            return Err(CommerceError::conflict(
                "total_mismatch",
                format!("the cart total is {} {}", total.amount, total.currency),
            ));
        }
        if total.amount < 50 {
            return Err(CommerceError::unprocessable(
                "amount_too_small",
                "the minimum order is 50 minor units",
            ));
        }
        let order_id = format!("ord_{}", uuid::Uuid::now_v7().simple());
        let lines: Vec<OrderLine> = cart
            .lines
            .iter()
            .map(|l| OrderLine {
                product_id: l.product_id.clone(),
                name: l.name.clone(),
                category: l.category.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.clone(),
            })
            .collect();
        let order = Order {
            id: order_id.clone(),
            user_id: user.clone(),
            status: OrderStatus::Created,
            lines: lines.clone(),
            total: total.clone(),
            shipping: req.shipping.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            payment: None,
            shipment: None,
            refund: None,
            cancel_reason: None,
            history: vec![HistoryEntry {
                at_ms: now,
                event: "ORDER_CREATED".into(),
                status: OrderStatus::Created,
                detail: None,
            }],
        };
        let body = serde_json::to_string(&CheckoutAccepted {
            order_id: order_id.clone(),
            status: OrderStatus::Created,
            total: total.clone(),
            links: CheckoutLinks {
                order: format!("/v1/orders/{order_id}"),
            },
        })
        .map_err(|e| CommerceError::Internal(format!("checkout body: {e}")))?;
        let event = SagaEvent::new(
            &order_id,
            now,
            SagaKind::OrderCreated {
                user_id: user.clone(),
                lines,
                total,
                payment_method: payment_method.clone(),
                shipping: req.shipping.clone(),
            },
        );
        let writes = vec![
            Write::put_json(order_key(&order_id), &order, Cond::Absent)?,
            Write::put(
                user_order_key(user, now, &order_id),
                order_id.clone().into_bytes(),
                Cond::Absent,
            ),
            Write::delete(cart_key(user), Cond::Version(v)),
            lease.complete_write(202, &body)?,
            outbox::write(&OutboxMessage::saga(event))?,
        ];
        match ctx.store.transact(writes).await {
            Ok(()) => {
                ctx.signals.outbox.notify_one();
                return Ok(body);
            }
            Err(e) if e.is_conflict() => {
                if !lease.still_held(ctx).await? {
                    return Err(CommerceError::conflict(
                        "idempotency_in_flight",
                        "another request with this Idempotency-Key took over",
                    ));
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommerceError::conflict(
        "concurrent_update",
        "the cart changed concurrently; retry",
    ))
}

/// The user's orders, newest first (ids only; at most `limit`, among the first 1 000),
/// starting after the order `after` (a page's last id). An `after` that is not one of the
/// user's orders is a 400, not an empty page.
pub(crate) async fn order_ids(
    ctx: &Ctx,
    user_id: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, CommerceError> {
    let rows = ctx
        .store
        .query(&format!("user_orders#{user_id}"), None, 1_000)
        .await?;
    let ids = rows
        .into_iter()
        .rev()
        .map(|(_, item)| String::from_utf8_lossy(&item.value).into_owned());
    match after {
        None => Ok(ids.take(limit).collect()),
        Some(a) => {
            let mut ids = ids.skip_while(|id| id != a);
            if ids.next().is_none() {
                return Err(CommerceError::BadRequest(format!(
                    "after: `{a}` is not one of your orders"
                )));
            }
            Ok(ids.take(limit).collect())
        }
    }
}

/// Reads an order.
pub(crate) async fn order(ctx: &Ctx, order_id: &str) -> Result<Option<Order>, CommerceError> {
    Ok(
        get_json::<Order>(ctx.store.as_ref(), "order", &order_key(order_id))
            .await?
            .map(|(o, _)| o),
    )
}
