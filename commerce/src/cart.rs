//! Carts: add (increments), set quantity (0 deletes), delete, get, clear; server-side
//! totals in integer minor units; an availability sweep.
//!
//! ```text
//!  handler ─► read cart (version) ─► apply ─► one transaction:
//!                 cart (conditional on the version) + outbox Clickstream(add_to_cart | remove_from_cart)
//!             conflict (a concurrent change) ─► re-read and re-apply (≤ 16 times)
//!  sweep (every sweep_interval_ms) ─► each cart in cart_index ─► catalog price / stock / active:
//!             removed (gone, inactive) · repriced · out_of_stock / low_stock flags ─► notices
//!  GET ─► the cart with its notices; the notices are then cleared (reported once)
//! ```
//!
//! A cart holds one currency; prices are the catalog's, captured when added and refreshed
//! by the sweep (and checked again at checkout).

use std::sync::Arc;

use recstream_ingest::{Event, EventType, Money, Timestamp};
use serde::{Deserialize, Serialize};

use super::Ctx;
use super::catalog::{Catalog, ProductView};
use super::error::CommerceError;
use super::saga::outbox::{self, OutboxMessage};
use super::store::{Cond, Key, Write, get_json};

/// The store key of a user's cart.
pub fn cart_key(user_id: &str) -> Key {
    Key::new(format!("cart#{user_id}"), "-")
}

const CART_INDEX: &str = "cart_index";

/// Why a cart line cannot be checked out as it is (set by the availability sweep).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LineFlag {
    /// The product has no stock left.
    OutOfStock,
    /// Fewer units in stock than the line asks for.
    LowStock {
        /// Units still available.
        available: i64,
    },
}

/// One line of a stored cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CartLine {
    /// The catalog's product id.
    pub product_id: String,
    /// Product name when the line was added.
    pub name: String,
    /// Category path, when the catalog has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Units (at least 1; setting 0 deletes the line).
    pub quantity: u32,
    /// The catalog price of one unit, refreshed by the sweep.
    pub unit_price: Money,
    /// Set while the line is out of stock or low on stock; checkout is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<LineFlag>,
}

/// What the availability sweep changed in a cart, reported once on the next GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoticeKind {
    /// The product is gone or no longer sold; the line was removed.
    Removed,
    /// The catalog price changed; the line now has the new price.
    Repriced {
        /// The price the line had.
        old: Money,
        /// The catalog's price now.
        new: Money,
    },
    /// The product ran out of stock; the line is flagged.
    OutOfStock,
    /// Fewer units in stock than the line asks for; the line is flagged.
    LowStock {
        /// Units still available.
        available: i64,
    },
    /// A flagged line is available again; the flag was cleared.
    BackInStock,
}

/// One change the sweep made to a cart line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CartNotice {
    /// The product of the line.
    pub product_id: String,
    /// What changed.
    #[serde(flatten)]
    pub kind: NoticeKind,
    /// When the sweep noticed, epoch ms.
    pub at_ms: i64,
}

/// A user's stored cart (`cart#<user>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cart {
    /// The lines, in the order first added.
    pub lines: Vec<CartLine>,
    /// Changes the sweep made since the last GET.
    #[serde(default)]
    pub notices: Vec<CartNotice>,
    /// When the cart last changed, epoch ms.
    pub updated_at_ms: i64,
}

/// What clients see: lines with totals, the subtotal, notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CartView {
    /// The cart's owner.
    pub user_id: String,
    /// The lines with their totals.
    pub lines: Vec<LineView>,
    /// Units over all lines.
    pub item_count: u64,
    /// `None` for an empty cart.
    pub subtotal: Option<Money>,
    /// False while a line is flagged out of stock / low stock.
    pub checkout_ready: bool,
    /// Changes since the last GET (reported once).
    pub notices: Vec<CartNotice>,
}

/// A cart line with its total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LineView {
    /// The stored line.
    #[serde(flatten)]
    pub line: CartLine,
    /// Unit price × quantity.
    pub line_total: Money,
}

/// Σ unit price × quantity, checked; all lines must share one currency.
pub fn subtotal(lines: &[CartLine]) -> Result<Option<Money>, CommerceError> {
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let mut total: i64 = 0;
    for l in lines {
        if l.unit_price.currency != first.unit_price.currency {
            return Err(CommerceError::conflict(
                "currency_mismatch",
                "a cart holds one currency",
            ));
        }
        let line = l
            .unit_price
            .amount
            .checked_mul(i64::from(l.quantity))
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| {
                CommerceError::unprocessable("amount_too_large", "cart total overflows")
            })?;
        total = line;
    }
    Ok(Some(Money::new(total, &first.unit_price.currency)))
}

impl Cart {
    /// The cart as clients see it: line totals, the subtotal, whether checkout may
    /// proceed. `Err` when lines mix currencies or a total overflows.
    pub fn view(&self, user_id: &str) -> Result<CartView, CommerceError> {
        let lines = self
            .lines
            .iter()
            .map(|l| {
                Ok(LineView {
                    line_total: Money::new(
                        l.unit_price
                            .amount
                            .checked_mul(i64::from(l.quantity))
                            .ok_or_else(|| {
                                CommerceError::unprocessable(
                                    "amount_too_large",
                                    "line total overflows",
                                )
                            })?,
                        &l.unit_price.currency,
                    ),
                    line: l.clone(),
                })
            })
            .collect::<Result<Vec<_>, CommerceError>>()?;
        Ok(CartView {
            user_id: user_id.to_string(),
            item_count: self.lines.iter().map(|l| u64::from(l.quantity)).sum(),
            subtotal: subtotal(&self.lines)?,
            checkout_ready: !self.lines.is_empty() && self.lines.iter().all(|l| l.flag.is_none()),
            lines,
            notices: self.notices.clone(),
        })
    }

    fn line(&self, product_id: &str) -> Option<&CartLine> {
        self.lines.iter().find(|l| l.product_id == product_id)
    }
}

/// A cart mutation, as requested.
#[derive(Debug, Clone)]
pub enum CartOp {
    /// Adds `quantity` units (to the line if there is one).
    Add {
        /// The catalog's product id.
        product_id: String,
        /// Units to add (at least 1).
        quantity: u32,
    },
    /// Sets the line's quantity; 0 deletes the line.
    Set {
        /// The catalog's product id.
        product_id: String,
        /// The new quantity.
        quantity: u32,
    },
    /// Deletes the line of the product.
    Remove {
        /// The catalog's product id.
        product_id: String,
    },
    /// Empties the cart.
    Clear,
}

/// Who asked, for the clickstream events.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The storefront session, copied into the clickstream events.
    pub session_id: Option<String>,
}

pub(crate) struct Carts {
    ctx: Arc<Ctx>,
}

fn click(
    user: &str,
    origin: &Origin,
    t: EventType,
    line: &CartLine,
    qty: u32,
    at_ms: i64,
) -> Event {
    let mut e = Event::new(
        &format!("cart-{}", uuid::Uuid::now_v7().simple()),
        Timestamp(at_ms),
        user,
        t,
    )
    .with_product(&line.product_id, line.category.as_deref());
    e.price = Some(line.unit_price.clone());
    e.quantity = Some(qty);
    e.session_id = origin.session_id.as_deref().map(Into::into);
    e
}

impl Carts {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Carts {
        Carts { ctx }
    }

    async fn load(&self, user_id: &str) -> Result<(Cart, Option<u64>), CommerceError> {
        Ok(
            match get_json::<Cart>(self.ctx.store.as_ref(), "cart", &cart_key(user_id)).await? {
                Some((c, v)) => (c, Some(v)),
                None => (Cart::default(), None),
            },
        )
    }

    /// The cart with its notices; the notices are cleared once reported.
    pub(crate) async fn get(&self, user_id: &str) -> Result<CartView, CommerceError> {
        let (mut cart, v) = self.load(user_id).await?;
        let view = cart.view(user_id)?;
        if let Some(v) = v
            && !cart.notices.is_empty()
        {
            cart.notices.clear();
            // Losing this race only means the notices are reported once more.
            let _ = self
                .ctx
                .store
                .transact(vec![Write::put_json(
                    cart_key(user_id),
                    &cart,
                    Cond::Version(v),
                )?])
                .await;
        }
        Ok(view)
    }

    async fn product(&self, id: &str) -> Result<ProductView, CommerceError> {
        self.ctx
            .catalog
            .product(id)
            .await?
            .ok_or_else(|| CommerceError::NotFound(format!("unknown product `{id}`")))
    }

    /// Applies `op` and emits its clickstream events, atomically.
    pub(crate) async fn apply(
        &self,
        user_id: &str,
        op: CartOp,
        origin: &Origin,
    ) -> Result<CartView, CommerceError> {
        let max_q = self.ctx.cfg.max_quantity;
        // Validate and look the product up once, outside the retry loop.
        let product = match &op {
            CartOp::Add {
                product_id,
                quantity,
            }
            | CartOp::Set {
                product_id,
                quantity,
            } => {
                super::check_id("product_id", product_id)?;
                if *quantity > max_q || (matches!(op, CartOp::Add { .. }) && *quantity == 0) {
                    return Err(CommerceError::unprocessable(
                        "invalid_quantity",
                        format!("quantity must be in 1..={max_q} (set 0 to delete)"),
                    ));
                }
                if *quantity > 0 {
                    Some(self.product(product_id).await?)
                } else {
                    None
                }
            }
            CartOp::Remove { product_id } => {
                super::check_id("product_id", product_id)?;
                None
            }
            CartOp::Clear => None,
        };
        for _ in 0..16 {
            let (mut cart, v) = self.load(user_id).await?;
            let now = self.ctx.clock.now_ms();
            let mut events = Vec::new();
            match &op {
                CartOp::Add {
                    product_id,
                    quantity,
                }
                | CartOp::Set {
                    product_id,
                    quantity,
                } if *quantity > 0 => {
                    let p = product
                        .as_ref()
                        .ok_or_else(|| CommerceError::Internal("product".into()))?;
                    if !p.product.active {
                        return Err(CommerceError::conflict(
                            "unavailable",
                            format!("`{product_id}` is not sold any more"),
                        ));
                    }
                    let current = cart.line(product_id).map(|l| l.quantity).unwrap_or(0);
                    let target = match op {
                        CartOp::Add { .. } => current + quantity,
                        _ => *quantity,
                    };
                    if target > max_q {
                        return Err(CommerceError::unprocessable(
                            "invalid_quantity",
                            format!(
                                "at most {max_q} units of one product per cart (has {current})"
                            ),
                        ));
                    }
                    if i64::from(target) > p.available {
                        return Err(CommerceError::conflict(
                            "insufficient_stock",
                            format!("only {} of `{product_id}` available", p.available),
                        ));
                    }
                    if let Some(other) = cart.lines.first()
                        && other.unit_price.currency != p.product.price.currency
                    {
                        return Err(CommerceError::conflict(
                            "currency_mismatch",
                            format!(
                                "the cart is in {}; `{product_id}` is sold in {}",
                                other.unit_price.currency, p.product.price.currency
                            ),
                        ));
                    }
                    if current == 0 && cart.lines.len() >= self.ctx.cfg.max_lines {
                        return Err(CommerceError::unprocessable(
                            "cart_full",
                            format!("at most {} products per cart", self.ctx.cfg.max_lines),
                        ));
                    }
                    let line = CartLine {
                        product_id: product_id.clone(),
                        name: p.product.name.clone(),
                        category: p.product.category.clone(),
                        quantity: target,
                        unit_price: p.product.price.clone(),
                        flag: None,
                    };
                    if target > current {
                        events.push(click(
                            user_id,
                            origin,
                            EventType::AddToCart,
                            &line,
                            target - current,
                            now,
                        ));
                    } else if target < current {
                        events.push(click(
                            user_id,
                            origin,
                            EventType::RemoveFromCart,
                            &line,
                            current - target,
                            now,
                        ));
                    }
                    match cart.lines.iter_mut().find(|l| l.product_id == *product_id) {
                        Some(l) => *l = line,
                        None => cart.lines.push(line),
                    }
                }
                CartOp::Add {
                    product_id: pid, ..
                }
                | CartOp::Set {
                    product_id: pid, ..
                }
                | CartOp::Remove { product_id: pid } => {
                    let Some(line) = cart.line(pid).cloned() else {
                        if matches!(op, CartOp::Remove { .. }) {
                            return Err(CommerceError::NotFound(format!(
                                "`{pid}` is not in the cart"
                            )));
                        }
                        return cart.view(user_id);
                    };
                    events.push(click(
                        user_id,
                        origin,
                        EventType::RemoveFromCart,
                        &line,
                        line.quantity,
                        now,
                    ));
                    cart.lines.retain(|l| l.product_id != *pid);
                }
                CartOp::Clear => {
                    for l in &cart.lines {
                        events.push(click(
                            user_id,
                            origin,
                            EventType::RemoveFromCart,
                            l,
                            l.quantity,
                            now,
                        ));
                    }
                    cart.lines.clear();
                    cart.notices.clear();
                }
            }
            if events.is_empty() && v.is_some() {
                return cart.view(user_id);
            }
            cart.updated_at_ms = now;
            let mut writes = vec![Write::put_json(
                cart_key(user_id),
                &cart,
                Cond::from_read(v),
            )?];
            if v.is_none() {
                writes.push(Write::put(
                    Key::new(CART_INDEX, user_id),
                    Vec::new(),
                    Cond::Any,
                ));
            }
            if !events.is_empty() {
                writes.push(outbox::write(&OutboxMessage::Clickstream { events })?);
            }
            match self.ctx.store.transact(writes).await {
                Ok(()) => {
                    self.ctx.signals.outbox.notify_one();
                    metrics::counter!(CART_OPS_TOTAL, "op" => op_name(&op)).increment(1);
                    return cart.view(user_id);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommerceError::conflict(
            "concurrent_update",
            "the cart changed concurrently; retry",
        ))
    }

    /// One pass over every cart. Returns how many carts changed.
    pub(crate) async fn sweep(&self) -> Result<usize, CommerceError> {
        let mut after: Option<String> = None;
        let mut changed = 0;
        loop {
            let page = self
                .ctx
                .store
                .query(CART_INDEX, after.as_deref(), 200)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (user_id, _) in &page {
                match self.sweep_one(user_id).await {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cart sweep skipped a cart"),
                }
            }
        }
        metrics::counter!(CART_SWEEP_CHANGED_TOTAL).increment(changed as u64);
        Ok(changed)
    }

    /// Re-checks one cart against the catalog; `true` if it changed.
    pub(crate) async fn sweep_one(&self, user_id: &str) -> Result<bool, CommerceError> {
        let (mut cart, Some(v)) = self.load(user_id).await? else {
            return Ok(false);
        };
        let now = self.ctx.clock.now_ms();
        let changed = self.reconcile(&mut cart, now).await?;
        if !changed {
            return Ok(false);
        }
        cart.updated_at_ms = now;
        // A concurrent user change wins; the next sweep looks again.
        match self
            .ctx
            .store
            .transact(vec![Write::put_json(
                cart_key(user_id),
                &cart,
                Cond::Version(v),
            )?])
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Brings prices, flags and lines in line with the catalog, adding notices.
    pub(crate) async fn reconcile(&self, cart: &mut Cart, now: i64) -> Result<bool, CommerceError> {
        let mut changed = false;
        let mut keep = Vec::with_capacity(cart.lines.len());
        let lines = std::mem::take(&mut cart.lines);
        for mut l in lines {
            let notice = |kind| CartNotice {
                product_id: l.product_id.clone(),
                kind,
                at_ms: now,
            };
            let p = self.ctx.catalog.product(&l.product_id).await?;
            let Some(p) = p.filter(|p| p.product.active) else {
                cart.notices.push(notice(NoticeKind::Removed));
                changed = true;
                continue;
            };
            if p.product.price != l.unit_price {
                cart.notices.push(notice(NoticeKind::Repriced {
                    old: l.unit_price.clone(),
                    new: p.product.price.clone(),
                }));
                l.unit_price = p.product.price.clone();
                changed = true;
            }
            let flag = if p.available <= 0 {
                Some(LineFlag::OutOfStock)
            } else if p.available < i64::from(l.quantity) {
                Some(LineFlag::LowStock {
                    available: p.available,
                })
            } else {
                None
            };
            if flag != l.flag {
                let kind = match &flag {
                    Some(LineFlag::OutOfStock) => NoticeKind::OutOfStock,
                    Some(LineFlag::LowStock { available }) => NoticeKind::LowStock {
                        available: *available,
                    },
                    None => NoticeKind::BackInStock,
                };
                cart.notices.push(notice(kind));
                l.flag = flag;
                changed = true;
            }
            keep.push(l);
        }
        cart.lines = keep;
        // Bounded: the oldest notices go first.
        if cart.notices.len() > 100 {
            let cut = cart.notices.len() - 100;
            cart.notices.drain(..cut);
        }
        Ok(changed)
    }
}

fn op_name(op: &CartOp) -> &'static str {
    match op {
        CartOp::Add { .. } => "add",
        CartOp::Set { .. } => "set",
        CartOp::Remove { .. } => "remove",
        CartOp::Clear => "clear",
    }
}

/// Cart mutations by operation.
pub const CART_OPS_TOTAL: &str = "recstream_commerce_cart_ops_total";
/// Carts changed by the availability sweep.
pub const CART_SWEEP_CHANGED_TOTAL: &str = "recstream_commerce_cart_sweep_changed_total";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, amount: i64, q: u32, cur: &str) -> CartLine {
        CartLine {
            product_id: id.into(),
            name: id.into(),
            category: None,
            quantity: q,
            unit_price: Money::new(amount, cur),
            flag: None,
        }
    }

    #[test]
    fn totals_are_integer_and_checked() {
        let c = Cart {
            lines: vec![line("a", 1999, 3, "USD"), line("b", 1, 1, "USD")],
            ..Default::default()
        };
        let v = c.view("u").unwrap();
        assert_eq!(v.subtotal, Some(Money::new(5998, "USD")));
        assert_eq!(v.item_count, 4);
        assert_eq!(v.lines[0].line_total, Money::new(5997, "USD"));
        assert!(v.checkout_ready);
        assert!(subtotal(&[line("a", i64::MAX, 2, "USD")]).is_err());
        assert!(subtotal(&[line("a", 1, 1, "USD"), line("b", 1, 1, "EUR")]).is_err());
        assert_eq!(Cart::default().view("u").unwrap().subtotal, None);
    }
}
