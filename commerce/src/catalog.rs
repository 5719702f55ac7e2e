//! The catalog seen by carts and checkout: price, availability, stock.
//!
//! ```text
//!  seed (JSON array or CSV; built-in demo by default) ─► StoreCatalog::seed (only new ids)
//!  store:  catalog / <product id>      ─► Product  (name, category, price, active)
//!          stock#<product id> / -      ─► Stock    (on_hand, reserved; inventory owns it)
//!  Catalog::product(id) ─► ProductView { product, available = on_hand − reserved }
//! ```
//!
//! The catalog only reads stock; reservations are made by the saga's inventory service
//! with conditional writes on the same `stock#…` items, so what carts show and what
//! inventory sells never disagree for longer than one read.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use recstream_ingest::Money;
use serde::{Deserialize, Serialize};

use super::error::CommerceError;
use super::store::{CommerceStore, Cond, Key, StoreError, Write, get_json};

/// Partition of the product items.
pub const CATALOG_PK: &str = "catalog";

/// The store key of a product.
pub fn product_key(id: &str) -> Key {
    Key::new(CATALOG_PK, id)
}

/// The store key of a product's stock (owned by inventory).
pub fn stock_key(id: &str) -> Key {
    Key::new(format!("stock#{id}"), "-")
}

/// A product as the catalog stores it (`catalog` / id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    /// The product id (also the clickstream's `product_id`).
    pub id: String,
    /// Display name (1 to 512 bytes).
    pub name: String,
    /// Category path, e.g. `electronics.audio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Price of one unit.
    pub price: Money,
    /// Inactive products cannot be bought and are removed from carts by the sweep.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Units on hand and units held by open reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stock {
    /// Units in the warehouse (committed sales already taken off).
    pub on_hand: i64,
    /// Units held by open reservations.
    pub reserved: i64,
}

impl Stock {
    /// Units that can be sold now: on hand minus reserved, never below 0.
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved).max(0)
    }
}

/// A product with its availability, as carts and the API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProductView {
    /// The stored product.
    #[serde(flatten)]
    pub product: Product,
    /// Units that can be sold now.
    pub available: i64,
}

impl ProductView {
    /// Whether it can be bought now: active and in stock.
    pub fn buyable(&self) -> bool {
        self.product.active && self.available > 0
    }
}

/// What carts and checkout read of the catalog.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// The product `id` with its availability; `None` if it does not exist.
    async fn product(&self, id: &str) -> Result<Option<ProductView>, CommerceError>;
    /// Products with id `> after`, ascending, at most `limit`.
    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ProductView>, CommerceError>;
}

/// One product of a seed file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedProduct {
    /// The product id.
    pub id: String,
    /// The product's title (`title` in a feed).
    #[serde(alias = "title")]
    pub name: String,
    /// Category path.
    #[serde(default)]
    pub category: Option<String>,
    /// Price of one unit.
    pub price: Money,
    /// Initial units on hand (not negative).
    pub stock: i64,
    /// Whether it is for sale (default true).
    #[serde(default = "yes")]
    pub active: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CsvRow {
    id: String,
    name: String,
    #[serde(default)]
    category: Option<String>,
    price_minor: i64,
    currency: String,
    stock: i64,
}

/// A row of a CSV product feed: `id,title,category,price,stock,active` (`price` in minor
/// units; optional `currency`, USD when absent; `active` true when empty).
#[derive(Debug, Deserialize)]
struct FeedRow {
    id: String,
    title: String,
    #[serde(default)]
    category: Option<String>,
    price: i64,
    #[serde(default)]
    currency: Option<String>,
    stock: i64,
    #[serde(default)]
    active: Option<String>,
}

fn feed_bool(v: Option<&str>) -> Result<bool, String> {
    match v.map(str::trim).unwrap_or("") {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        other => Err(format!("active: `{other}` is not true/false")),
    }
}

/// Reads a product feed: JSON lines (`.jsonl` / `.ndjson`, one [`SeedProduct`] per line,
/// `title` or `name`), CSV (`id,title,category,price,stock,active`, price in minor units,
/// optional `currency`), or what [`load_seed`] reads. Every product is validated; the
/// first bad one fails the whole feed with its line.
pub fn load_feed(path: &Path) -> Result<Vec<SeedProduct>, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items = match ext.as_str() {
        "jsonl" | "ndjson" => parse_json_lines(&text),
        "csv"
            if text
                .lines()
                .next()
                .is_some_and(|h| h.split(',').any(|c| c.trim() == "title")) =>
        {
            parse_feed_csv(&text)
        }
        _ => return load_seed(path),
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    for p in &items {
        validate_seed(p).map_err(|e| format!("{}: product `{}`: {e}", path.display(), p.id))?;
    }
    Ok(items)
}

/// JSON lines: one product object per non-blank line.
pub fn parse_json_lines(text: &str) -> Result<Vec<SeedProduct>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// CSV with the header `id,title,category,price,stock,active` (any order; `currency`
/// optional).
pub fn parse_feed_csv(text: &str) -> Result<Vec<SeedProduct>, String> {
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, row) in rdr.deserialize::<FeedRow>().enumerate() {
        let r = row.map_err(|e| format!("row {}: {e}", i + 1))?;
        out.push(SeedProduct {
            id: r.id,
            name: r.title,
            category: r.category.filter(|c| !c.is_empty()),
            price: Money::new(r.price, r.currency.as_deref().unwrap_or("USD")),
            stock: r.stock,
            active: feed_bool(r.active.as_deref()).map_err(|e| format!("row {}: {e}", i + 1))?,
        });
    }
    Ok(out)
}

/// The built-in demo catalog.
pub fn demo_seed() -> Vec<SeedProduct> {
    serde_json::from_str(include_str!("demo_catalog.json")).unwrap_or_default()
}

/// Reads a seed: a JSON array of [`SeedProduct`], or CSV with the header
/// `id,name,category,price_minor,currency,stock`.
pub fn load_seed(path: &Path) -> Result<Vec<SeedProduct>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Vec<SeedProduct> = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        rdr.deserialize::<CsvRow>()
            .map(|r| {
                r.map(|r| SeedProduct {
                    id: r.id,
                    name: r.name,
                    category: r.category.filter(|c| !c.is_empty()),
                    price: Money::new(r.price_minor, &r.currency),
                    stock: r.stock,
                    active: true,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    };
    for p in &items {
        validate_seed(p).map_err(|e| format!("{}: product `{}`: {e}", path.display(), p.id))?;
    }
    Ok(items)
}

fn validate_seed(p: &SeedProduct) -> Result<(), String> {
    super::check_id("product id", &p.id).map_err(|e| e.to_string())?;
    if p.name.is_empty() || p.name.len() > 512 {
        return Err("name must be 1 to 512 bytes".into());
    }
    super::check_money(&p.price).map_err(|e| e.to_string())?;
    if p.stock < 0 {
        return Err("stock must not be negative".into());
    }
    Ok(())
}

/// The catalog over the commerce store (embedded or DynamoDB alike).
pub struct StoreCatalog {
    store: Arc<dyn CommerceStore>,
}

impl StoreCatalog {
    /// A catalog over `store`.
    pub fn new(store: Arc<dyn CommerceStore>) -> StoreCatalog {
        StoreCatalog { store }
    }

    /// Adds the products that do not exist yet (with their stock); returns how many.
    /// Products are written in transactions of up to 50 (a feed of thousands loads in a
    /// second); a batch in which one already exists is retried product by product.
    pub async fn seed(&self, items: &[SeedProduct]) -> Result<usize, CommerceError> {
        let mut added = 0;
        for p in items {
            validate_seed(p).map_err(CommerceError::BadRequest)?;
        }
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&SeedProduct> = items.iter().filter(|p| seen.insert(&p.id)).collect();
        for chunk in unique.chunks(super::store::MAX_WRITES / 2) {
            let mut writes = Vec::with_capacity(chunk.len() * 2);
            for p in chunk {
                writes.extend(Self::seed_writes(p)?);
            }
            match self.store.transact(writes).await {
                Ok(()) => {
                    added += chunk.len();
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            for p in chunk {
                match self.store.transact(Self::seed_writes(p)?).await {
                    Ok(()) => added += 1,
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(added)
    }

    fn seed_writes(p: &SeedProduct) -> Result<Vec<Write>, CommerceError> {
        let product = Product {
            id: p.id.clone(),
            name: p.name.clone(),
            category: p.category.clone(),
            price: p.price.clone(),
            active: p.active,
        };
        Ok(vec![
            Write::put_json(product_key(&p.id), &product, Cond::Absent)?,
            Write::put_json(
                stock_key(&p.id),
                &Stock {
                    on_hand: p.stock,
                    reserved: 0,
                },
                Cond::Absent,
            )?,
        ])
    }

    /// Creates the product or replaces its title, category, price and active flag and
    /// sets its units on hand (reservations are kept). Returns whether it was created.
    pub async fn upsert(&self, p: &SeedProduct) -> Result<bool, CommerceError> {
        validate_seed(p).map_err(CommerceError::BadRequest)?;
        if self.seed(std::slice::from_ref(p)).await? == 1 {
            return Ok(true);
        }
        self.update_product(&p.id, |cur| {
            cur.name = p.name.clone();
            cur.category = p.category.clone();
            cur.price = p.price.clone();
            cur.active = p.active;
        })
        .await?;
        self.set_on_hand(&p.id, p.stock).await?;
        Ok(false)
    }

    /// Changes a price (carts see it on the next sweep or checkout).
    pub async fn set_price(&self, id: &str, price: Money) -> Result<(), CommerceError> {
        super::check_money(&price)?;
        self.update_product(id, |p| p.price = price.clone()).await
    }

    /// Activates or deactivates a product (the sweep then removes it from carts).
    pub async fn set_active(&self, id: &str, active: bool) -> Result<(), CommerceError> {
        self.update_product(id, |p| p.active = active).await
    }

    /// Sets the units on hand (a stock count / goods receipt); reservations are kept.
    pub async fn set_on_hand(&self, id: &str, on_hand: i64) -> Result<(), CommerceError> {
        if on_hand < 0 {
            return Err(CommerceError::BadRequest(
                "on_hand must not be negative".into(),
            ));
        }
        for _ in 0..16 {
            let cur = get_json::<Stock>(self.store.as_ref(), "stock", &stock_key(id)).await?;
            let (mut s, cond) = match cur {
                Some((s, v)) => (s, Cond::Version(v)),
                None => (Stock::default(), Cond::Absent),
            };
            s.on_hand = on_hand;
            match self
                .store
                .transact(vec![Write::put_json(stock_key(id), &s, cond)?])
                .await
            {
                Err(e) if e.is_conflict() => continue,
                r => return r.map_err(Into::into),
            }
        }
        Err(CommerceError::conflict(
            "concurrent_update",
            "stock changed concurrently",
        ))
    }

    /// The product's stock, or `None` if it has none.
    pub async fn stock(&self, id: &str) -> Result<Option<Stock>, CommerceError> {
        Ok(
            get_json::<Stock>(self.store.as_ref(), "stock", &stock_key(id))
                .await?
                .map(|(s, _)| s),
        )
    }

    async fn update_product(
        &self,
        id: &str,
        f: impl Fn(&mut Product),
    ) -> Result<(), CommerceError> {
        for _ in 0..16 {
            let Some((mut p, v)) =
                get_json::<Product>(self.store.as_ref(), "product", &product_key(id)).await?
            else {
                return Err(CommerceError::NotFound(format!("unknown product `{id}`")));
            };
            f(&mut p);
            match self
                .store
                .transact(vec![Write::put_json(
                    product_key(id),
                    &p,
                    Cond::Version(v),
                )?])
                .await
            {
                Err(e) if e.is_conflict() => continue,
                r => return r.map_err(Into::into),
            }
        }
        Err(CommerceError::conflict(
            "concurrent_update",
            "product changed concurrently",
        ))
    }

    async fn view(&self, p: Product) -> Result<ProductView, CommerceError> {
        let available = self.stock(&p.id).await?.map(|s| s.available()).unwrap_or(0);
        Ok(ProductView {
            product: p,
            available,
        })
    }
}

#[async_trait]
impl Catalog for StoreCatalog {
    async fn product(&self, id: &str) -> Result<Option<ProductView>, CommerceError> {
        match get_json::<Product>(self.store.as_ref(), "product", &product_key(id)).await? {
            Some((p, _)) => Ok(Some(self.view(p).await?)),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ProductView>, CommerceError> {
        let rows = self.store.query(CATALOG_PK, after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (_, item) in rows {
            let p: Product = super::store::from_json("product", &item.value)?;
            out.push(self.view(p).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    #[test]
    fn demo_seed_is_valid() {
        let seed = demo_seed();
        assert!(seed.len() >= 10);
        for p in &seed {
            validate_seed(p).unwrap();
        }
    }

    #[test]
    fn csv_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        std::fs::write(
            &path,
            "id,name,category,price_minor,currency,stock\na,Alpha,,100,EUR,3\n",
        )
        .unwrap();
        let s = load_seed(&path).unwrap();
        assert_eq!(s[0].price, Money::new(100, "EUR"));
        assert_eq!(s[0].category, None);
        std::fs::write(
            &path,
            "id,name,category,price_minor,currency,stock\na,Alpha,,100,EUR,-3\n",
        )
        .unwrap();
        assert!(load_seed(&path).is_err());
    }

    #[test]
    fn feeds_in_json_lines_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("feed.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"id":"a","title":"Alpha","category":"x.y","price":{"amount":100,"currency":"EUR"},"stock":3}"#,
                "\n\n",
                r#"{"id":"b","title":"Beta","price":{"amount":5,"currency":"USD"},"stock":0,"active":false}"#,
                "\n"
            ),
        )
        .unwrap();
        let f = load_feed(&jsonl).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "Alpha");
        assert_eq!(f[0].category.as_deref(), Some("x.y"));
        assert!(!f[1].active);
        std::fs::write(
            &jsonl,
            r#"{"id":"","title":"x","price":{"amount":1,"currency":"USD"},"stock":1}"#,
        )
        .unwrap();
        assert!(load_feed(&jsonl).is_err(), "a blank id fails the feed");

        let csv = dir.path().join("feed.csv");
        std::fs::write(
            &csv,
            "id,title,category,price,stock,active\na,Alpha,x.y,100,3,true\nb,Beta,,5,0,false\nc,Gamma,,7,1,\n",
        )
        .unwrap();
        let f = load_feed(&csv).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].price, Money::new(100, "USD"));
        assert!(!f[1].active && f[2].active);
        assert_eq!(f[1].category, None);
        std::fs::write(
            &csv,
            "id,title,category,price,stock,active\na,Alpha,,100,3,maybe\n",
        )
        .unwrap();
        assert!(load_feed(&csv).unwrap_err().contains("active"));
        // The seed format still loads through load_feed.
        std::fs::write(
            &csv,
            "id,name,category,price_minor,currency,stock\na,Alpha,,100,EUR,3\n",
        )
        .unwrap();
        assert_eq!(load_feed(&csv).unwrap()[0].price, Money::new(100, "EUR"));
    }

    #[tokio::test]
    async fn upsert_creates_then_updates_keeping_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CommerceStore> =
            Arc::new(EmbeddedStore::open(dir.path().join("c.redb")).unwrap());
        let cat = StoreCatalog::new(store);
        let mut p = SeedProduct {
            id: "n1".into(),
            name: "New".into(),
            category: None,
            price: Money::new(100, "USD"),
            stock: 2,
            active: true,
        };
        assert!(cat.upsert(&p).await.unwrap());
        p.name = "Renamed".into();
        p.stock = 0;
        assert!(!cat.upsert(&p).await.unwrap());
        let v = cat.product("n1").await.unwrap().unwrap();
        assert_eq!(v.product.name, "Renamed");
        assert!(!v.buyable(), "no stock");
    }

    #[tokio::test]
    async fn seed_is_idempotent_and_reads_see_stock() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn CommerceStore> =
            Arc::new(EmbeddedStore::open(dir.path().join("c.redb")).unwrap());
        let cat = StoreCatalog::new(store);
        let seed = demo_seed();
        assert_eq!(cat.seed(&seed).await.unwrap(), seed.len());
        cat.set_on_hand("p-1001", 3).await.unwrap();
        assert_eq!(
            cat.seed(&seed).await.unwrap(),
            0,
            "re-seeding keeps the stock"
        );
        assert_eq!(cat.product("p-1001").await.unwrap().unwrap().available, 3);
        assert!(!cat.product("p-1012").await.unwrap().unwrap().buyable());
        assert_eq!(cat.list(None, 100).await.unwrap().len(), seed.len());
        assert_eq!(cat.list(Some("p-1010"), 100).await.unwrap().len(), 2);
        cat.set_price("p-1001", Money::new(7999, "USD"))
            .await
            .unwrap();
        assert_eq!(
            cat.product("p-1001")
                .await
                .unwrap()
                .unwrap()
                .product
                .price
                .amount,
            7999
        );
        assert!(cat.product("nope").await.unwrap().is_none());
    }
}
