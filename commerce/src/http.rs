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
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`); [`openapi_routes`]
//! registers handler and description together (utoipa-axum), so the served routes and the
//! spec cannot drift apart. The common error answers (400, 401/403 on secured operations,
//! 413/415/422 on bodies, 408/414/500/503) are added to every operation by serving's
//! spec assembly; the annotations list the ones specific to a handler.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::CommerceState;
use super::api_error::ErrorBody;
use super::auth::Principal;
use super::cart::CartView;
use super::cart::{CartOp, Carts, Origin};
use super::catalog::Catalog;
use super::catalog::ProductView;
use super::checkout;
use super::checkout::{CheckoutAccepted, CheckoutRequest};
use super::error::CommerceError;
use super::saga::orders::Order;
use super::saga::orders::OrderStatus;
use super::saga::payments::{PaymentRecord, PaymentStatus, payment_key};
use super::store::get_json;
use super::webhook;

/// Most orders on one page of `GET /v1/orders`.
const MAX_ORDERS_PAGE: usize = 100;

/// Most products on one page of `GET /v1/catalog/products`.
const MAX_PRODUCTS_PAGE: usize = 200;

/// Largest cart or checkout body.
const MAX_BODY: usize = 16 * 1024;

/// The commerce router, state applied, ready to `.merge()` into the API router.
pub fn routes(state: CommerceState) -> Router {
    openapi_routes(state).into()
}

/// [`routes`] with their OpenAPI description (utoipa-axum), for the API's spec.
pub fn openapi_routes(state: CommerceState) -> OpenApiRouter {
    let webhook = OpenApiRouter::new()
        .routes(routes!(webhook_handler))
        .layer(DefaultBodyLimit::max(webhook::MAX_WEBHOOK_BODY));
    OpenApiRouter::new()
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(add_item))
        .routes(routes!(set_item, remove_item))
        .routes(routes!(checkout_handler))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(list_products))
        .routes(routes!(get_product, put_product))
        .routes(routes!(put_stock))
        .routes(routes!(deactivate_product))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .merge(webhook)
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

/// The caller's cart, with totals and the sweep's notices (reported once).
#[utoipa::path(get, path = "/v1/carts/{user_id}", tag = "carts",
    params(("user_id" = String, Path, description = "The cart's owner: the token's `sub`.")),
    responses((status = 200, description = "The cart.", body = CartView)),
    security(("bearer" = [])))]
async fn get_cart(
    State(st): State<CommerceState>,
    who: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, CommerceError> {
    let user = owner(&who, path)?;
    Ok(Json(Carts::new(st.ctx.clone()).get(&user).await?).into_response())
}

/// Empties the caller's cart.
#[utoipa::path(delete, path = "/v1/carts/{user_id}", tag = "carts",
    params(("user_id" = String, Path, description = "The cart's owner: the token's `sub`."),
        ("x-session-id" = Option<String>, Header, description = "The storefront session, for the clickstream.")),
    responses((status = 200, description = "The (empty) cart.", body = CartView)),
    security(("bearer" = [])))]
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

/// The body of `POST /v1/carts/{user_id}/items`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddItem {
    /// A catalog product id.
    product_id: String,
    /// Units to add (default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, default = 1)]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// The body of `PUT /v1/carts/{user_id}/items/{product_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetItem {
    /// The line's new quantity (0 deletes the line).
    quantity: u32,
}

/// Adds units of a catalog product to the caller's cart.
#[utoipa::path(post, path = "/v1/carts/{user_id}/items", tag = "carts",
    params(("user_id" = String, Path, description = "The cart's owner: the token's `sub`."),
        ("x-session-id" = Option<String>, Header, description = "The storefront session, for the clickstream.")),
    request_body = AddItem,
    responses((status = 200, description = "The cart after the change.", body = CartView),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody),
        (status = 409, description = "Not enough stock or a concurrent change (`insufficient_stock`, `concurrent_update`, …).", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// Sets a line's quantity (0 deletes the line).
#[utoipa::path(put, path = "/v1/carts/{user_id}/items/{product_id}", tag = "carts",
    params(("user_id" = String, Path, description = "The cart's owner: the token's `sub`."),
        ("product_id" = String, Path, description = "The line's product."),
        ("x-session-id" = Option<String>, Header, description = "The storefront session, for the clickstream.")),
    request_body = SetItem,
    responses((status = 200, description = "The cart after the change.", body = CartView),
        (status = 404, description = "`not_found`: no such product or line.", body = ErrorBody),
        (status = 409, description = "Not enough stock or a concurrent change.", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// Removes a line from the caller's cart.
#[utoipa::path(delete, path = "/v1/carts/{user_id}/items/{product_id}", tag = "carts",
    params(("user_id" = String, Path, description = "The cart's owner: the token's `sub`."),
        ("product_id" = String, Path, description = "The line's product."),
        ("x-session-id" = Option<String>, Header, description = "The storefront session, for the clickstream.")),
    responses((status = 200, description = "The cart after the change.", body = CartView),
        (status = 404, description = "`not_found`: no such line.", body = ErrorBody),
        (status = 409, description = "A concurrent change.", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// Turns the caller's cart into an order, once per `Idempotency-Key` (a retry with the
/// same key and body replays the first answer, with `Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/v1/checkout", tag = "orders",
    params(("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters, unique per checkout attempt.")),
    request_body = CheckoutRequest,
    responses((status = 202, description = "The order is created; its saga reserves stock and takes the payment.", body = CheckoutAccepted),
        (status = 402, description = "`payment_failed`: the payment was declined.", body = ErrorBody),
        (status = 409, description = "`cart_changed`, `total_mismatch`, `insufficient_stock`, a request with the same key in flight, …", body = ErrorBody),
        (status = 422, description = "`cart_empty`, the key reused with another body, …", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// The query of `GET /v1/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Orders per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next_after` of the previous page (an order id).
    after: Option<String>,
}

/// One order of a [`OrdersPage`].
#[derive(Debug, Serialize, ToSchema)]
struct OrderSummary {
    order_id: String,
    status: OrderStatus,
    total: recstream_ingest::Money,
    created_at_ms: i64,
}

/// The body of `GET /v1/orders`.
#[derive(Debug, Serialize, ToSchema)]
struct OrdersPage {
    orders: Vec<OrderSummary>,
    /// Pass as `after` for the next page; `null` on the last one.
    next_after: Option<String>,
}

/// The query of `GET /v1/catalog/products`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ProductsQuery {
    /// Products per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
    /// The `next_after` of the previous page (a product id).
    after: Option<String>,
}

/// The body of `GET /v1/catalog/products`.
#[derive(Debug, Serialize, ToSchema)]
struct ProductsPage {
    products: Vec<ProductView>,
    /// Pass as `after` for the next page; `null` on the last one.
    next_after: Option<String>,
}

/// The answer to a webhook delivery.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookAck {
    /// Always true.
    received: bool,
    /// True when this event id was received before (nothing was done again).
    duplicate: bool,
}

/// The caller's orders, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/orders", tag = "orders",
    params(ListQuery),
    responses((status = 200, description = "One page of orders.", body = OrdersPage)),
    security(("bearer" = [])))]
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
            orders.push(OrderSummary {
                order_id: o.id,
                status: o.status,
                total: o.total,
                created_at_ms: o.created_at_ms,
            });
        }
    }
    let next_after = (orders.len() == limit)
        .then(|| orders.last().map(|o| o.order_id.clone()))
        .flatten();
    Ok(Json(OrdersPage { orders, next_after }).into_response())
}

/// One of the caller's orders with its history (and, while a 3-D Secure payment waits
/// for the customer, `payment_action`).
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The order id checkout returned.")),
    responses((status = 200, description = "The order.", body = Order),
        (status = 404, description = "`not_found`: no such order.", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// The catalog, by product id, a page at a time (public).
#[utoipa::path(get, path = "/v1/catalog/products", tag = "catalog",
    params(ProductsQuery),
    responses((status = 200, description = "One page of products.", body = ProductsPage)))]
async fn list_products(
    State(st): State<CommerceState>,
    q: Result<Query<ProductsQuery>, QueryRejection>,
) -> Result<Response, CommerceError> {
    let Query(q) = q?;
    if let Some(a) = &q.after {
        super::check_id("after", a)?;
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PRODUCTS_PAGE).contains(&limit) {
        return Err(CommerceError::BadRequest(format!(
            "limit must be in 1..={MAX_PRODUCTS_PAGE}"
        )));
    }
    let products = st.ctx.catalog.list(q.after.as_deref(), limit).await?;
    let next_after = (products.len() == limit)
        .then(|| products.last().map(|p| p.product.id.clone()))
        .flatten();
    Ok(Json(ProductsPage {
        products,
        next_after,
    })
    .into_response())
}

/// One product with its availability (public).
#[utoipa::path(get, path = "/v1/catalog/products/{product_id}", tag = "catalog",
    params(("product_id" = String, Path, description = "The product id.")),
    responses((status = 200, description = "The product.", body = ProductView),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody)))]
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

/// The body of `PUT /v1/catalog/products/{product_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    /// Display name (`name` is accepted too).
    #[serde(alias = "name")]
    title: String,
    /// Category path, e.g. `electronics.audio`.
    #[serde(default)]
    category: Option<String>,
    /// Price of one unit.
    price: recstream_ingest::Money,
    /// Units on hand.
    #[schema(minimum = 0)]
    stock: i64,
    /// For sale (default true).
    #[serde(default = "yes")]
    #[schema(default = true)]
    active: bool,
}

fn yes() -> bool {
    true
}

/// Creates or updates a product (admin role).
#[utoipa::path(put, path = "/v1/catalog/products/{product_id}", tag = "catalog",
    params(("product_id" = String, Path, description = "The product id.")),
    request_body = ProductBody,
    responses((status = 200, description = "Updated.", body = ProductView),
        (status = 201, description = "Created.", body = ProductView)),
    security(("bearer" = [])))]
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

/// The body of `PUT /v1/catalog/products/{product_id}/stock`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StockBody {
    /// Units in the warehouse.
    #[schema(minimum = 0)]
    on_hand: i64,
}

/// Sets a product's units on hand (admin role).
#[utoipa::path(put, path = "/v1/catalog/products/{product_id}/stock", tag = "catalog",
    params(("product_id" = String, Path, description = "The product id.")),
    request_body = StockBody,
    responses((status = 200, description = "The product after the change.", body = ProductView),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// Takes a product off sale (admin role); carts drop it on the next sweep.
#[utoipa::path(post, path = "/v1/catalog/products/{product_id}/deactivate", tag = "catalog",
    params(("product_id" = String, Path, description = "The product id.")),
    responses((status = 200, description = "The product after the change.", body = ProductView),
        (status = 404, description = "`not_found`: no such product.", body = ErrorBody)),
    security(("bearer" = [])))]
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

/// Stripe events (`payment_intent.succeeded`, `payment_intent.payment_failed`, …),
/// verified by their `Stripe-Signature` and deduplicated by event id.
#[utoipa::path(post, path = "/v1/payments/webhook", tag = "payments",
    params(("Stripe-Signature" = Option<String>, Header, description = "`t=<unix s>,v1=<hex HMAC-SHA256>`; a missing or wrong one is a 400.")),
    request_body(content = Object, description = "A Stripe event (`{\"id\": \"evt_…\", \"type\": …, \"data\": {\"object\": …}}`)."),
    responses((status = 200, description = "Received (or a duplicate delivery).", body = WebhookAck),
        (status = 404, description = "`not_found`: webhooks are not configured.", body = ErrorBody)))]
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
        Json(WebhookAck {
            received: true,
            duplicate: !fresh,
        }),
    )
        .into_response())
}
