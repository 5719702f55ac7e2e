//! The clickstream event: the one record type every stage agrees on.
//!
//! Ids are [`CompactString`]s, so the short ids of real shops (up to 24 bytes) never touch
//! the heap. Money is always integer minor units plus an ISO-4217 currency code. Unknown
//! JSON fields are not modelled here: the archive keeps the raw record bytes beside the
//! typed columns, so nothing the producer sent is lost.

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Earliest accepted event time (2000-01-01T00:00:00Z).
    pub const MIN: Timestamp = Timestamp(946_684_800_000);
    /// Latest accepted event time (2100-01-01T00:00:00Z).
    pub const MAX: Timestamp = Timestamp(4_102_444_800_000);

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// The instant as a UTC date-time (the epoch if out of chrono's range, which the
    /// accepted range [`Timestamp::MIN`]..=[`Timestamp::MAX`] never is).
    pub fn to_datetime(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }

    /// Parse RFC 3339 (`2019-10-01T00:00:00Z`, with offset or fraction).
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|dt| Timestamp(dt.timestamp_millis()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            self.to_datetime()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    /// Accepts epoch milliseconds (integer) or an RFC 3339 string.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 timestamp")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse_rfc3339(v)
                    .ok_or_else(|| E::custom(format_args!("`{v}` is not RFC 3339")))
            }
        }
        d.deserialize_any(V)
    }
}

/// What the shopper did. Unknown types are kept (and counted), never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A product page was viewed.
    View,
    /// A product was put into the cart.
    AddToCart,
    /// A product was taken out of the cart.
    RemoveFromCart,
    /// An order was placed for the product.
    Purchase,
    /// A search was run (`query` holds the text).
    Search,
    /// A recommendation or search result was clicked.
    Click,
    /// The shop's catalog entry for `product_id` (published by its back office onto the
    /// stream, never accepted from a client of the collector): `product` holds the title,
    /// the units on hand and whether it is sold; `price` and `category` the rest. Shard
    /// processors with the catalog configured write it to the catalog (absolute values:
    /// a replay writes the same); it is never aggregated into features.
    Product,
    /// A recommendations response as served (published by the server, not by the shop):
    /// `recommendation_id`, the ranked `items`, `model_version` and `strategy`. The shard
    /// processor joins the clicks, carts and purchases that name its id to it; it is
    /// never aggregated into features.
    Recommendation,
    /// Any other type string, kept verbatim so that nothing the producer sent is lost.
    Other(CompactString),
}

impl EventType {
    /// Maps the wire name (`view`, `add_to_cart`, …) to a type; unknown names become
    /// [`EventType::Other`], never an error.
    pub fn parse(s: &str) -> EventType {
        match s {
            "view" => EventType::View,
            "add_to_cart" => EventType::AddToCart,
            "remove_from_cart" => EventType::RemoveFromCart,
            "purchase" => EventType::Purchase,
            "search" => EventType::Search,
            "click" => EventType::Click,
            "recommendation" => EventType::Recommendation,
            "product" => EventType::Product,
            other => EventType::Other(CompactString::from(other)),
        }
    }

    /// The wire name; the inverse of [`EventType::parse`].
    pub fn as_str(&self) -> &str {
        match self {
            EventType::View => "view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
            EventType::Search => "search",
            EventType::Click => "click",
            EventType::Recommendation => "recommendation",
            EventType::Product => "product",
            EventType::Other(s) => s,
        }
    }

    /// Whether this type is about one product (and so requires `product_id`).
    pub fn needs_product(&self) -> bool {
        matches!(
            self,
            EventType::View
                | EventType::AddToCart
                | EventType::RemoveFromCart
                | EventType::Purchase
                | EventType::Click
                | EventType::Product
        )
    }

    /// Whether this is something a shopper did (the types features are made of); served
    /// lists and catalog entries are not.
    pub fn is_activity(&self) -> bool {
        !matches!(self, EventType::Recommendation | EventType::Product)
    }
}

/// One item of a served list (a `recommendation` event): what was shown where, with the
/// score and the feature row it was ranked with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedItem {
    /// The product shown.
    pub product_id: CompactString,
    /// 1-based rank in the list (the first item is position 1).
    pub position: u32,
    /// The score the list was ordered by (comparable only within one list).
    pub score: f64,
    /// The pair features the model ranked the item with (empty when no model ranked it:
    /// the blend, cold start, a backfilled item). Logged, never recomputed, so that the
    /// online learner learns from exactly what was ranked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f32>,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    /// Parses the type from the borrowed text: no allocation for the known types (serde's
    /// `Cow<str>` would always allocate).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EventType;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event type string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EventType, E> {
                Ok(EventType::parse(v))
            }
        }
        d.deserialize_str(V)
    }
}

/// An amount of money in integer minor units (cents) of an ISO-4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    /// Minor units; never a float.
    pub amount: i64,
    /// Three upper-case letters, e.g. `USD`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[A-Z]{3}$"))]
    pub currency: CompactString,
}

impl Money {
    /// `amount` minor units of `currency` (not validated here; decoding checks the code).
    pub fn new(amount: i64, currency: &str) -> Money {
        Money {
            amount,
            currency: CompactString::from(currency),
        }
    }
}

/// The catalog part of a `product` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductInfo {
    /// Display name (1 to 512 bytes).
    pub title: String,
    /// Units on hand (not negative; reservations of open carts are kept apart).
    pub stock: i64,
    /// Whether it is for sale (default true).
    #[serde(default = "for_sale")]
    pub active: bool,
}

fn for_sale() -> bool {
    true
}

/// Optional demographics, used for cold start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Age band as the shop reports it, e.g. `25-34`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_band: Option<CompactString>,
    /// Gender as the shop reports it, e.g. `f`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<CompactString>,
    /// Region as the shop reports it, e.g. `eu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<CompactString>,
}

impl Profile {
    /// The demographic segment key used by the cold-start cache, e.g. `25-34|f|eu`.
    pub fn segment_key(&self) -> Option<CompactString> {
        segment_key(
            self.age_band.as_deref(),
            self.gender.as_deref(),
            self.region.as_deref(),
        )
    }
}

/// The demographic segment key of a profile's parts, e.g. `25-34|f|eu` (a missing part is
/// `*`; none at all is no segment). Shared by [`Profile`] and the borrowed profile.
pub fn segment_key(
    age_band: Option<&str>,
    gender: Option<&str>,
    region: Option<&str>,
) -> Option<CompactString> {
    if age_band.is_none() && gender.is_none() && region.is_none() {
        return None;
    }
    let part = |p: Option<&str>| p.unwrap_or("*").to_ascii_lowercase();
    Some(compact_str::format_compact!(
        "{}|{}|{}",
        part(age_band),
        part(gender),
        part(region)
    ))
}

/// One validated clickstream event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The producer's id of the event, unique per event.
    pub event_id: CompactString,
    /// When the event happened, as the producer stamped it (event time, not arrival).
    pub ts: Timestamp,
    /// The shop's user id, or an anonymous visitor id; also the stream's partition key.
    pub user_id: CompactString,
    /// The browsing session, when the shop tracks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<CompactString>,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The product the event is about (views, cart changes, purchases, clicks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<CompactString>,
    /// Category path of the product, e.g. `electronics.smartphone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<CompactString>,
    /// Brand of the product, as the shop names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<CompactString>,
    /// Unit price of the product at the time of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
    /// Units bought or put into the cart (at most 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// Search text of a `search` event (at most 1 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Demographics sent with the event, used for cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// The recommendation response this event answers (clicks and purchases after a
    /// recommendation), for attribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation_id: Option<CompactString>,
    /// Product ids shown to the user with this event (at most 200).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub impressions: Vec<CompactString>,
    /// The ranked list of a `recommendation` event, best first (only on that type).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ServedItem>,
    /// The model version that ranked a `recommendation` event's list (none: no model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<CompactString>,
    /// How a `recommendation` event's list was built (`personalized`, `cold_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<CompactString>,
    /// The catalog entry of a `product` event (only on that type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductInfo>,
}

impl Event {
    /// A minimal event; the builder-style setters fill in the rest.
    pub fn new(event_id: &str, ts: Timestamp, user_id: &str, event_type: EventType) -> Event {
        Event {
            event_id: event_id.into(),
            ts,
            user_id: user_id.into(),
            session_id: None,
            event_type,
            product_id: None,
            category: None,
            brand: None,
            price: None,
            quantity: None,
            query: None,
            profile: None,
            recommendation_id: None,
            impressions: Vec::new(),
            items: Vec::new(),
            model_version: None,
            strategy: None,
            product: None,
        }
    }

    /// Sets the product and its category.
    pub fn with_product(mut self, product_id: &str, category: Option<&str>) -> Event {
        self.product_id = Some(product_id.into());
        self.category = category.map(Into::into);
        self
    }

    /// A `recommendation` event: the list served to `user_id` at `ts` under
    /// `recommendation_id` (also its `event_id`: one event per response).
    pub fn recommendation(
        recommendation_id: &str,
        ts: Timestamp,
        user_id: &str,
        strategy: &str,
        model_version: Option<&str>,
        items: Vec<ServedItem>,
    ) -> Event {
        let mut e = Event::new(recommendation_id, ts, user_id, EventType::Recommendation);
        e.recommendation_id = Some(recommendation_id.into());
        e.strategy = Some(strategy.into());
        e.model_version = model_version.map(Into::into);
        e.items = items;
        e
    }

    /// Sets the session.
    pub fn with_session(mut self, session_id: &str) -> Event {
        self.session_id = Some(session_id.into());
        self
    }

    /// Serialise as the wire JSON the decoder accepts.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Event always serialises")
    }
}
