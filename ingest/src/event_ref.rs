//! The borrowed event of the hot path: [`EventRef`], an event whose text fields point into
//! the record's bytes.
//!
//! ```text
//!  record bytes ──► serde_json (strings borrowed; an escaped one is unescaped into a copy)
//!               ──► EventRef<'bytes> ──► validate in place ──► Aggregator::apply_ref
//!                                                         └──► to_event() ─► Event (archive, join)
//! ```
//!
//! This module owns the borrowed layout ([`EventRef`], [`MoneyRef`], [`ProfileRef`], the
//! string [`Str`]) and the conversions between it and the owned [`Event`]. It mirrors
//! [`Event`] field for field, in the same order and under the same serde names, so that a
//! record is accepted or refused, and explained, exactly as [`Event`]'s own `Deserialize`
//! would; the decoder and the validation rules stay in [`crate::decode`].

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use compact_str::CompactString;
use serde::de::{Deserializer, Error, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::event::{Event, EventType, Money, ProductInfo, Profile, ServedItem, Timestamp};

/// A string of a record: borrowed from the record's bytes, or unescaped into a copy when
/// the JSON string holds escapes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    /// A string borrowed from `s`.
    pub fn borrowed(s: &'a str) -> Str<'a> {
        Str(Cow::Borrowed(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text as an inline-or-heap [`CompactString`].
    pub fn to_compact(&self) -> CompactString {
        CompactString::from(self.as_str())
    }
}

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Str<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Str<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    /// Borrows when the deserializer can lend the text (serde_json does for strings
    /// without escapes). Expects and explains exactly as [`CompactString`] does, so that
    /// error messages are the owned event's.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
            fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Str<'de>, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => Ok(Str(Cow::Borrowed(s))),
                    Err(_) => Err(Error::invalid_value(Unexpected::Bytes(v), &self)),
                }
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Str<'de>, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => Ok(Str(Cow::Owned(s.to_owned()))),
                    Err(_) => Err(Error::invalid_value(Unexpected::Bytes(v), &self)),
                }
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Str<'de>, E> {
                match String::from_utf8(v) {
                    Ok(s) => Ok(Str(Cow::Owned(s))),
                    Err(e) => Err(Error::invalid_value(
                        Unexpected::Bytes(&e.into_bytes()),
                        &self,
                    )),
                }
            }
        }
        d.deserialize_str(V)
    }
}

fn opt<'a>(s: &'a Option<CompactString>) -> Option<Str<'a>> {
    s.as_deref().map(Str::borrowed)
}

fn opt_owned(s: &Option<Str<'_>>) -> Option<CompactString> {
    s.as_ref().map(Str::to_compact)
}

/// [`Money`] with a borrowed currency code.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename = "Money")]
pub struct MoneyRef<'a> {
    /// Minor units; never a float.
    pub amount: i64,
    /// Three upper-case letters, e.g. `USD` (checked by validation).
    #[serde(borrow)]
    pub currency: Str<'a>,
}

/// [`Profile`] with borrowed text.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename = "Profile")]
pub struct ProfileRef<'a> {
    /// Age band as the shop reports it.
    #[serde(default, borrow)]
    pub age_band: Option<Str<'a>>,
    /// Gender as the shop reports it.
    #[serde(default, borrow)]
    pub gender: Option<Str<'a>>,
    /// Region as the shop reports it.
    #[serde(default, borrow)]
    pub region: Option<Str<'a>>,
}

impl ProfileRef<'_> {
    /// The demographic segment key, as [`Profile::segment_key`] makes it.
    pub fn segment_key(&self) -> Option<CompactString> {
        crate::event::segment_key(
            self.age_band.as_deref(),
            self.gender.as_deref(),
            self.region.as_deref(),
        )
    }
}

/// An [`Event`] whose text borrows from the record it was decoded from (see the module
/// docs). Fields, names and order are [`Event`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename = "Event")]
pub struct EventRef<'a> {
    /// The producer's id of the event.
    #[serde(borrow)]
    pub event_id: Str<'a>,
    /// When the event happened (event time).
    pub ts: Timestamp,
    /// The shop's user id, or an anonymous visitor id.
    #[serde(borrow)]
    pub user_id: Str<'a>,
    /// The browsing session, when the shop tracks one.
    #[serde(default, borrow)]
    pub session_id: Option<Str<'a>>,
    /// What happened (an unknown type is kept inline up to 24 bytes).
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The product the event is about.
    #[serde(default, borrow)]
    pub product_id: Option<Str<'a>>,
    /// Category path of the product.
    #[serde(default, borrow)]
    pub category: Option<Str<'a>>,
    /// Brand of the product.
    #[serde(default, borrow)]
    pub brand: Option<Str<'a>>,
    /// Unit price of the product at the time of the event.
    #[serde(default, borrow)]
    pub price: Option<MoneyRef<'a>>,
    /// Units bought or put into the cart.
    #[serde(default)]
    pub quantity: Option<u32>,
    /// Search text of a `search` event.
    #[serde(default, borrow)]
    pub query: Option<Str<'a>>,
    /// Demographics sent with the event.
    #[serde(default, borrow)]
    pub profile: Option<ProfileRef<'a>>,
    /// The recommendation response this event answers.
    #[serde(default, borrow)]
    pub recommendation_id: Option<Str<'a>>,
    /// Product ids shown to the user with this event (allocates only when present).
    #[serde(default, borrow)]
    pub impressions: Vec<Str<'a>>,
    /// The ranked list of a `recommendation` event (owned: only that rare type has one).
    #[serde(default)]
    pub items: Cow<'a, [ServedItem]>,
    /// The model version that ranked a `recommendation` event's list.
    #[serde(default, borrow)]
    pub model_version: Option<Str<'a>>,
    /// How a `recommendation` event's list was built.
    #[serde(default, borrow)]
    pub strategy: Option<Str<'a>>,
    /// The catalog entry of a `product` event (owned: only that rare type has one).
    #[serde(default)]
    pub product: Option<Cow<'a, ProductInfo>>,
}

impl EventRef<'_> {
    /// The owned event with the same content.
    pub fn to_event(&self) -> Event {
        Event {
            event_id: self.event_id.to_compact(),
            ts: self.ts,
            user_id: self.user_id.to_compact(),
            session_id: opt_owned(&self.session_id),
            event_type: self.event_type.clone(),
            product_id: opt_owned(&self.product_id),
            category: opt_owned(&self.category),
            brand: opt_owned(&self.brand),
            price: self.price.as_ref().map(|p| Money {
                amount: p.amount,
                currency: p.currency.to_compact(),
            }),
            quantity: self.quantity,
            query: self.query.as_ref().map(|q| q.as_str().to_owned()),
            profile: self.profile.as_ref().map(|p| Profile {
                age_band: opt_owned(&p.age_band),
                gender: opt_owned(&p.gender),
                region: opt_owned(&p.region),
            }),
            recommendation_id: opt_owned(&self.recommendation_id),
            impressions: self.impressions.iter().map(Str::to_compact).collect(),
            items: self.items.to_vec(),
            model_version: opt_owned(&self.model_version),
            strategy: opt_owned(&self.strategy),
            product: self.product.as_deref().cloned(),
        }
    }
}

impl Event {
    /// A borrowed view of this event (allocates only for its impressions, if any).
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: Str::borrowed(&self.event_id),
            ts: self.ts,
            user_id: Str::borrowed(&self.user_id),
            session_id: opt(&self.session_id),
            event_type: self.event_type.clone(),
            product_id: opt(&self.product_id),
            category: opt(&self.category),
            brand: opt(&self.brand),
            price: self.price.as_ref().map(|p| MoneyRef {
                amount: p.amount,
                currency: Str::borrowed(&p.currency),
            }),
            quantity: self.quantity,
            query: self.query.as_deref().map(Str::borrowed),
            profile: self.profile.as_ref().map(|p| ProfileRef {
                age_band: opt(&p.age_band),
                gender: opt(&p.gender),
                region: opt(&p.region),
            }),
            recommendation_id: opt(&self.recommendation_id),
            impressions: self.impressions.iter().map(|i| Str::borrowed(i)).collect(),
            items: Cow::Borrowed(&self.items),
            model_version: opt(&self.model_version),
            strategy: opt(&self.strategy),
            product: self.product.as_ref().map(Cow::Borrowed),
        }
    }
}
