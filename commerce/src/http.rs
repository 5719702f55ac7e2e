//! The commerce endpoints: thin handlers over the flows.
//!
//! | method | path | auth |
//! |---|---|---|
//! | GET | `/v1/carts/{user_id}` | owner |
//! | DELETE | `/v1/carts/{user_id}` (clear) | owner |
//! | POST | `/v1/carts/{user_id}/items` `{"product_id", "quantity"}` (adds) | owner |
//! | PUT | `/v1/carts/{user_id}/items/{product_id}` `{"quantity"}` (0 deletes) | owner |
//! | DELETE | `/v1/carts/{user_id}/items/{product_id}` | owner |
//! | POST | `/v1/checkout` + `Idempotency-Key` | caller's cart |
//! | GET | `/v1/orders?limit=1..=100&after=<order_id>`, `/v1/orders/{order_id}` | owner |
//! | GET | `/v1/catalog/products`, `/v1/catalog/products/{product_id}` | public |
//! | PUT | `/v1/catalog/products/{product_id}` (create or update) | admin group |
//! | PUT | `/v1/catalog/products/{product_id}/stock` `{"on_hand"}` | admin group |
//! | POST | `/v1/catalog/products/{product_id}/deactivate` | admin group |
//! | POST | `/v1/payments/webhook` | `Stripe-Signature` |

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::CommerceState;
use super::auth::Principal;
use super::cart::{CartOp, Carts, Origin};
use super::catalog::Catalog;
use super::checkout;
use super::error::CommerceError;
use super::saga::orders::OrderStatus;
use super::saga::payments::{PaymentRecord, PaymentStatus, payment_key};
use super::store::get_json;
use super::webhook;

/// Most orders on one page of `GET /v1/orders`.
const MAX_ORDERS_PAGE: usize = 100;

/// Largest cart or checkout body.
const MAX_BODY: usize = 16 * 1024;

/// The commerce router, state applied, ready to `.merge()` into the API router.
pub fn routes(state: CommerceState) -> Router {
    Router::new()
        .route("/v1/carts/{user_id}", get(get_cart).delete(clear_cart))
        .route("/v1/carts/{user_id}/items", post(add_item))
        .route(
            "/v1/carts/{user_id}/items/{product_id}",
            put(set_item).delete(remove_item),
        )
        .route("/v1/checkout", post(checkout_handler))
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/{order_id}", get(get_order))
        .route("/v1/catalog/products", get(list_products))
        .route(
            "/v1/catalog/products/{product_id}",
            get(get_product).put(put_product),
        )
        .route("/v1/catalog/products/{product_id}/stock", put(put_stock))
        .route(
            "/v1/catalog/products/{product_id}/deactivate",
            post(deactivate_product),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route(
            "/v1/payments/webhook",
            post(webhook_handler).layer(DefaultBodyLimit::max(webhook::MAX_WEBHOOK_BODY)),
        )
        .with_state(state)
}

fn origin(headers: &HeaderMap) -> Origin {
    Origin {
        session_id: headers
            .get("x-session-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| super::check_id("session", s).is_ok())
            .map(str::to_string),
    }
}

fn owner(
    who: &Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, CommerceError> {
    let Path(user_id) = path?;
    super::check_id("user_id", &user_id)?;
    who.require_owner(&user_id)?;
    Ok(user_id)
}

async fn get_cart(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    let user = owner(&who, path)?;
    Ok(Json(Carts::new(st.ctx.clone()).get(&user).await?).into_response())
}

async fn clear_cart(
    State(st): State<CommerceState>,
    who: Principal,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    let user = owner(&who, path)?;
    let view = Carts::new(st.ctx.clone())
        .apply(&user, CartOp::Clear, &origin(&headers))
        .await?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddItem {
    product_id: String,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetItem {
    quantity: u32,
}

async fn add_item(
    State(st): State<CommerceState>,
    who: Principal,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<AddItem>, JsonRejection>,
) -> Result<Response, CommerceError> {
    let user = owner(&who, path)?;
    let Json(b) = body?;
    let op = CartOp::Add {
        product_id: b.product_id,
        quantity: b.quantity,
    };
    let view = Carts::new(st.ctx.clone())
        .apply(&user, op, &origin(&headers))
        .await?;
    Ok(Json(view).into_response())
}

async fn set_item(
    State(st): State<CommerceState>,
    who: Principal,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<SetItem>, JsonRejection>,
) -> Result<Response, CommerceError> {
    let Path((user, product_id)) = path?;
    super::check_id("user_id", &user)?;
    who.require_owner(&user)?;
    let Json(b) = body?;
    let op = CartOp::Set {
        product_id,
        quantity: b.quantity,
    };
    let view = Carts::new(st.ctx.clone())
        .apply(&user, op, &origin(&headers))
        .await?;
    Ok(Json(view).into_response())
}

async fn remove_item(
    State(st): State<CommerceState>,
    who: Principal,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, CommerceError> {
    let Path((user, product_id)) = path?;
    super::check_id("user_id", &user)?;
    who.require_owner(&user)?;
    let view = Carts::new(st.ctx.clone())
        .apply(&user, CartOp::Remove { product_id }, &origin(&headers))
        .await?;
    Ok(Json(view).into_response())
}

async fn checkout_handler(
    State(st): State<CommerceState>,
    who: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CommerceError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map_err(|_| {
            CommerceError::BadRequest("Idempotency-Key must be visible ASCII".into())
        })?),
        None => None,
    };
    let out = checkout::checkout(&st.ctx, &who, key, &body).await?;
    let mut resp = (
        out.status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out.body,
    )
        .into_response();
    if out.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_orders(
    State(st): State<CommerceState>,
    who: Principal,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CommerceError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_ORDERS_PAGE).contains(&limit) {
        return Err(CommerceError::BadRequest(format!(
            "limit must be in 1..={MAX_ORDERS_PAGE}"
        )));
    }
    if let Some(a) = &q.after {
        super::check_id("after", a)?;
    }
    let ids = checkout::order_ids(&st.ctx, &who.user_id, q.after.as_deref(), limit).await?;
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(o) = checkout::order(&st.ctx, &id).await? {
            orders.push(json!({"order_id": o.id, "status": o.status, "total": o.total, "created_at_ms": o.created_at_ms}));
        }
    }
    let next = (orders.len() == limit)
        .then(|| orders.last().map(|o| o["order_id"].clone()))
        .flatten();
    Ok(Json(json!({"orders": orders, "next_after": next})).into_response())
}

async fn get_order(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    let Path(order_id) = path?;
    super::check_id("order_id", &order_id)?;
    let order = checkout::order(&st.ctx, &order_id)
        .await?
        .ok_or_else(|| CommerceError::NotFound(format!("no order `{order_id}`")))?;
    who.require_owner(&order.user_id)?;
    if order.status == OrderStatus::Prepared
        && let Some((p, _)) =
            get_json::<PaymentRecord>(st.ctx.store.as_ref(), "payment", &payment_key(&order.id))
                .await?
        && p.status == PaymentStatus::RequiresAction
    {
        // A 3-D Secure payment waits for the customer: tell the owner how to complete it,
        // as Stripe's API does (status, client secret, next action).
        let mut v = serde_json::to_value(&order)
            .map_err(|e| CommerceError::Internal(format!("order view: {e}")))?;
        v["payment_action"] = json!({
            "status": "requires_action",
            "payment_intent_id": p.intent_id,
            "client_secret": p.client_secret,
            "next_action": {"type": "use_stripe_sdk"},
        });
        return Ok(Json(v).into_response());
    }
    Ok(Json(order).into_response())
}

async fn list_products(
    State(st): State<CommerceState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, CommerceError> {
    let Query(q) = q?;
    if let Some(a) = &q.after {
        super::check_id("after", a)?;
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let items = st.ctx.catalog.list(q.after.as_deref(), limit).await?;
    let next = (items.len() == limit)
        .then(|| items.last().map(|p| p.product.id.clone()))
        .flatten();
    Ok(Json(json!({"products": items, "next_after": next})).into_response())
}

async fn get_product(
    State(st): State<CommerceState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    let Path(id) = path?;
    super::check_id("product_id", &id)?;
    match st.ctx.catalog.product(&id).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(CommerceError::NotFound(format!("unknown product `{id}`"))),
    }
}

/// 403 unless the caller is in one of `commerce.auth.admin_groups`.
fn require_admin(st: &CommerceState, who: &Principal) -> Result<(), CommerceError> {
    who.require_group(&st.ctx.cfg.auth.admin_groups, "admin")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    #[serde(alias = "name")]
    title: String,
    #[serde(default)]
    category: Option<String>,
    price: recstream_ingest::Money,
    stock: i64,
    #[serde(default = "yes")]
    active: bool,
}

fn yes() -> bool {
    true
}

async fn put_product(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ProductBody>, JsonRejection>,
) -> Result<Response, CommerceError> {
    require_admin(&st, &who)?;
    let Path(id) = path?;
    super::check_id("product_id", &id)?;
    let Json(b) = body?;
    let seed = super::catalog::SeedProduct {
        id: id.clone(),
        name: b.title,
        category: b.category.filter(|c| !c.is_empty()),
        price: b.price,
        stock: b.stock,
        active: b.active,
    };
    let created = st.ctx.catalog.upsert(&seed).await?;
    tracing::info!(admin = %who.user_id, product = %id, created, "catalog product written");
    let view = st
        .ctx
        .catalog
        .product(&id)
        .await?
        .ok_or_else(|| CommerceError::NotFound(format!("unknown product `{id}`")))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockBody {
    on_hand: i64,
}

async fn put_stock(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<StockBody>, JsonRejection>,
) -> Result<Response, CommerceError> {
    require_admin(&st, &who)?;
    let Path(id) = path?;
    super::check_id("product_id", &id)?;
    let Json(b) = body?;
    if st.ctx.catalog.product(&id).await?.is_none() {
        return Err(CommerceError::NotFound(format!("unknown product `{id}`")));
    }
    st.ctx.catalog.set_on_hand(&id, b.on_hand).await?;
    tracing::info!(admin = %who.user_id, product = %id, on_hand = b.on_hand, "stock set");
    let view = st.ctx.catalog.product(&id).await?;
    Ok(Json(view).into_response())
}

async fn deactivate_product(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    require_admin(&st, &who)?;
    let Path(id) = path?;
    super::check_id("product_id", &id)?;
    st.ctx.catalog.set_active(&id, false).await?;
    tracing::info!(admin = %who.user_id, product = %id, "product deactivated");
    let view = st.ctx.catalog.product(&id).await?;
    Ok(Json(view).into_response())
}

async fn webhook_handler(
    State(st): State<CommerceState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CommerceError> {
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let fresh = webhook::receive(&st.ctx, sig, &body).await?;
    Ok((
        StatusCode::OK,
        Json(json!({"received": true, "duplicate": !fresh})),
    )
        .into_response())
}
