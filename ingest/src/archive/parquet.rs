//! The archive's Arrow schema and its Parquet encoding.
//!
//! ```text
//!  [ArchivedRow] ─► Arrow columns (≤ 128k rows a batch) ─► ArrowWriter (snappy, stats) ─► Bytes
//!  Bytes ─► ParquetRecordBatchReader ─► cast to the schema ─► [ArchivedRow]
//! ```
//!
//! One flat row per event, standard logical types only (UTF8 strings, INT64/INT32,
//! TIMESTAMP(MILLIS, UTC), a 3-level LIST of strings), so DuckDB, pyarrow, pandas, Athena
//! and Spark read the files as they are. The `dt`/`hour` partition values live in the
//! object key, not in the file. `raw` keeps the record exactly as the producer sent it
//! (unknown fields included); the typed columns are what recstream understood of it.
//!
//! Schema 2 appends the served list of `recommendation` events (`model_version`,
//! `strategy`, `items`: a list of structs with the feature rows) after the columns of
//! schema 1, which keep their names, types and order; schema-1 files read back with the
//! new columns NULL.
//!
//! Reading back: a `profile` with no field set reads back as `None`, and an empty
//! `impressions` or `items` list is stored as NULL and reads back as empty. A `raw` payload that is
//! not UTF-8 (possible only for non-JSON sources) is stored lossily.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, GenericListArray, Int32Array,
    Int32Builder, Int64Builder, ListArray, ListBuilder, PrimitiveArray, RecordBatch, StringArray,
    StringBuilder, StructArray, TimestampMillisecondArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{
    ArrowNativeType, DataType, Field, Fields, Float32Type, Float64Type, Int32Type, Int64Type,
    Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use bytes::Bytes;
use compact_str::CompactString;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::decode::DecodeError;
use crate::error::IngestError;
use crate::event::{Event, EventType, Money, Profile, ServedItem, Timestamp};
use crate::record::{SeqNo, ShardId};

/// Rows per Parquet row group (and per Arrow batch while encoding).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Version of the archive schema, written to the file's key-value metadata.
pub const SCHEMA_VERSION: &str = "2";
/// Key-value metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "recstream.archive.schema_version";

const UTC: &str = "UTC";
const LIST_ITEM: &str = "element";

/// One archived event: the decoded event, where it came from, and its raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedRow {
    /// The shard the record was read from.
    pub shard: ShardId,
    /// Sequence number of the record in its shard.
    pub seq: SeqNo,
    /// Position inside a KPL aggregate (0 for a plain record).
    pub sub_seq: u32,
    /// When the stream accepted the record.
    pub arrival: Timestamp,
    /// The decoded, validated event.
    pub event: Event,
    /// The record exactly as received (the original JSON, unknown fields included).
    pub raw: Bytes,
}

impl ArchivedRow {
    /// Whether the row fits the archive's column types (`quantity` and
    /// `sub_sequence_number` are INT32). Validated events always do; the writer sends a
    /// row that does not to the dead letters instead of failing the roll.
    pub fn check_encodable(&self) -> Result<(), DecodeError> {
        if self
            .event
            .quantity
            .is_some_and(|q| i32::try_from(q).is_err())
        {
            return Err(DecodeError::Invalid {
                field: "quantity",
                problem: "does not fit the archive's int32 column".into(),
            });
        }
        if i32::try_from(self.sub_seq).is_err() {
            return Err(DecodeError::Invalid {
                field: "sub_sequence_number",
                problem: "does not fit the archive's int32 column".into(),
            });
        }
        Ok(())
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new(LIST_ITEM, DataType::Utf8, false)))
}

fn features_field() -> Arc<Field> {
    Arc::new(Field::new(LIST_ITEM, DataType::Float32, false))
}

/// The fields of one served item (`items.list.element`).
fn item_fields() -> Fields {
    Fields::from(vec![
        Field::new("product_id", DataType::Utf8, false),
        Field::new("position", DataType::Int32, false),
        Field::new("score", DataType::Float64, false),
        Field::new("features", DataType::List(features_field()), true),
    ])
}

fn item_field() -> Arc<Field> {
    Arc::new(Field::new(
        LIST_ITEM,
        DataType::Struct(item_fields()),
        false,
    ))
}

/// Columns added by schema 2 (read back as NULL from schema-1 files).
const ADDED_IN_2: [&str; 3] = ["model_version", "strategy", "items"];

/// The Arrow schema of every archive file (column order is part of the contract).
pub fn archive_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                utf8("event_id", false),
                Field::new("ts", ts_type(), false),
                utf8("user_id", false),
                utf8("session_id", true),
                utf8("type", false),
                utf8("product_id", true),
                utf8("category", true),
                utf8("brand", true),
                Field::new("price_amount", DataType::Int64, true),
                utf8("price_currency", true),
                Field::new("quantity", DataType::Int32, true),
                utf8("query", true),
                utf8("age_band", true),
                utf8("gender", true),
                utf8("region", true),
                utf8("recommendation_id", true),
                Field::new("impressions", list_type(), true),
                utf8("raw", false),
                utf8("shard", false),
                utf8("sequence_number", false),
                Field::new("sub_sequence_number", DataType::Int32, false),
                Field::new("arrival_ts", ts_type(), false),
                utf8("model_version", true),
                utf8("strategy", true),
                Field::new("items", DataType::List(item_field()), true),
            ]))
        })
        .clone()
}

fn writer_properties() -> WriterProperties {
    // Columns that are unique per row gain nothing from a dictionary, and min/max
    // statistics of the raw JSON help no query.
    let unique = ["event_id", "raw", "sequence_number"];
    let mut b = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .set_coerce_types(true)
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_string(),
            SCHEMA_VERSION.to_string(),
        )]));
    for col in unique {
        b = b.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    b = b.set_column_statistics_enabled(ColumnPath::from("raw"), EnabledStatistics::None);
    b.build()
}

fn parquet_err(e: impl std::fmt::Display) -> IngestError {
    IngestError::Parquet(e.to_string())
}

/// Encodes rows as one Parquet file (snappy, page statistics, ≤ [`ROW_GROUP_ROWS`] rows
/// per row group). Rows keep their order.
pub fn encode_events(rows: &[ArchivedRow]) -> Result<Bytes, IngestError> {
    let refs: Vec<&ArchivedRow> = rows.iter().collect();
    encode_refs(&refs)
}

/// [`encode_events`] over borrowed rows (the writer groups rows by hour without copying).
pub(crate) fn encode_refs(rows: &[&ArchivedRow]) -> Result<Bytes, IngestError> {
    let schema = archive_schema();
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.raw.len()).sum::<usize>() / 4 + 4096);
    let mut writer = ArrowWriter::try_new(&mut out, schema.clone(), Some(writer_properties()))
        .map_err(parquet_err)?;
    for chunk in rows.chunks(ROW_GROUP_ROWS) {
        let batch = to_batch(&schema, chunk)?;
        writer.write(&batch).map_err(parquet_err)?;
    }
    writer.close().map_err(parquet_err)?;
    Ok(Bytes::from(out))
}

/// Builders for the optional string columns, in schema order.
struct Strings {
    b: StringBuilder,
}

impl Strings {
    fn new(rows: usize, bytes: usize) -> Strings {
        Strings {
            b: StringBuilder::with_capacity(rows, bytes),
        }
    }
    fn push(&mut self, v: Option<&str>) {
        self.b.append_option(v);
    }
    fn finish(mut self) -> ArrayRef {
        Arc::new(self.b.finish())
    }
}

fn to_batch(schema: &SchemaRef, rows: &[&ArchivedRow]) -> Result<RecordBatch, IngestError> {
    let n = rows.len();
    let s = |avg: usize| Strings::new(n, n * avg);
    let (mut event_id, mut user_id, mut session_id, mut ty) = (s(24), s(12), s(36), s(8));
    let (mut product_id, mut category, mut brand, mut currency) = (s(12), s(24), s(8), s(3));
    let (mut query, mut age_band, mut gender, mut region, mut rec_id) =
        (s(0), s(0), s(0), s(0), s(0));
    let (mut shard, mut seq) = (s(20), s(56));
    let (mut model_version, mut strategy) = (s(0), s(0));
    let mut items = ItemColumns::default();
    let mut raw = Strings::new(n, rows.iter().map(|r| r.raw.len()).sum());
    let mut ts = Vec::with_capacity(n);
    let mut arrival = Vec::with_capacity(n);
    let mut amount = Int64Builder::with_capacity(n);
    let mut quantity = Int32Builder::with_capacity(n);
    let mut sub_seq = Int32Builder::with_capacity(n);
    let mut impressions = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        LIST_ITEM,
        DataType::Utf8,
        false,
    )));

    for row in rows {
        let e = &row.event;
        event_id.push(Some(&e.event_id));
        ts.push(e.ts.0);
        user_id.push(Some(&e.user_id));
        session_id.push(e.session_id.as_deref());
        ty.push(Some(e.event_type.as_str()));
        product_id.push(e.product_id.as_deref());
        category.push(e.category.as_deref());
        brand.push(e.brand.as_deref());
        amount.append_option(e.price.as_ref().map(|p| p.amount));
        currency.push(e.price.as_ref().map(|p| p.currency.as_str()));
        let q = e
            .quantity
            .map(|q| i32::try_from(q).map_err(|_| parquet_err(format!("quantity {q} over int32"))))
            .transpose()?;
        quantity.append_option(q);
        query.push(e.query.as_deref());
        let profile = e.profile.as_ref();
        age_band.push(profile.and_then(|p| p.age_band.as_deref()));
        gender.push(profile.and_then(|p| p.gender.as_deref()));
        region.push(profile.and_then(|p| p.region.as_deref()));
        rec_id.push(e.recommendation_id.as_deref());
        if e.impressions.is_empty() {
            impressions.append_null();
        } else {
            for id in &e.impressions {
                impressions.values().append_value(id);
            }
            impressions.append(true);
        }
        raw.push(Some(&String::from_utf8_lossy(&row.raw)));
        shard.push(Some(row.shard.as_str()));
        seq.push(Some(row.seq.as_str()));
        let sub = i32::try_from(row.sub_seq)
            .map_err(|_| parquet_err(format!("sub-sequence number {} over int32", row.sub_seq)))?;
        sub_seq.append_value(sub);
        arrival.push(row.arrival.0);
        model_version.push(e.model_version.as_deref());
        strategy.push(e.strategy.as_deref());
        items.push(&e.items)?;
    }

    let columns: Vec<ArrayRef> = vec![
        event_id.finish(),
        Arc::new(TimestampMillisecondArray::from(ts).with_timezone(UTC)),
        user_id.finish(),
        session_id.finish(),
        ty.finish(),
        product_id.finish(),
        category.finish(),
        brand.finish(),
        Arc::new(amount.finish()),
        currency.finish(),
        Arc::new(quantity.finish()),
        query.finish(),
        age_band.finish(),
        gender.finish(),
        region.finish(),
        rec_id.finish(),
        Arc::new(impressions.finish()),
        raw.finish(),
        shard.finish(),
        seq.finish(),
        Arc::new(sub_seq.finish()),
        Arc::new(TimestampMillisecondArray::from(arrival).with_timezone(UTC)),
        model_version.finish(),
        strategy.finish(),
        items.finish()?,
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(parquet_err)
}

/// The `items` column under construction: flat child arrays and the offsets into them.
#[derive(Default)]
struct ItemColumns {
    offsets: Vec<i32>,
    valid: Vec<bool>,
    product_id: Vec<String>,
    position: Vec<i32>,
    score: Vec<f64>,
    feature_offsets: Vec<i32>,
    feature_valid: Vec<bool>,
    features: Vec<f32>,
}

impl ItemColumns {
    fn push(&mut self, items: &[ServedItem]) -> Result<(), IngestError> {
        let off = |n: usize| i32::try_from(n).map_err(|_| parquet_err("items column over 2^31"));
        if self.offsets.is_empty() {
            self.offsets.push(0);
            self.feature_offsets.push(0);
        }
        for it in items {
            self.product_id.push(it.product_id.to_string());
            self.position.push(
                i32::try_from(it.position)
                    .map_err(|_| parquet_err(format!("position {} over int32", it.position)))?,
            );
            self.score.push(it.score);
            self.features.extend_from_slice(&it.features);
            self.feature_valid.push(!it.features.is_empty());
            self.feature_offsets.push(off(self.features.len())?);
        }
        self.valid.push(!items.is_empty());
        self.offsets.push(off(self.product_id.len())?);
        Ok(())
    }

    fn finish(mut self) -> Result<ArrayRef, IngestError> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
            self.feature_offsets.push(0);
        }
        let features = ListArray::try_new(
            features_field(),
            OffsetBuffer::new(self.feature_offsets.into()),
            Arc::new(Float32Array::from(self.features)),
            Some(NullBuffer::from(self.feature_valid)),
        )
        .map_err(parquet_err)?;
        let structs = StructArray::try_new(
            item_fields(),
            vec![
                Arc::new(StringArray::from(self.product_id)) as ArrayRef,
                Arc::new(Int32Array::from(self.position)),
                Arc::new(Float64Array::from(self.score)),
                Arc::new(features),
            ],
            None,
        )
        .map_err(parquet_err)?;
        let list = ListArray::try_new(
            item_field(),
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(structs),
            Some(NullBuffer::from(self.valid)),
        )
        .map_err(parquet_err)?;
        Ok(Arc::new(list))
    }
}

/// Reads the served items of row `i` from the `items` column.
fn read_items(items: &GenericListArray<i32>, i: usize) -> Result<Vec<ServedItem>, IngestError> {
    if items.is_null(i) {
        return Ok(Vec::new());
    }
    let structs = items
        .values()
        .as_struct_opt()
        .ok_or_else(|| parquet_err("column `items` is not a list of structs"))?;
    let field = |name: &str| {
        structs
            .column_by_name(name)
            .ok_or_else(|| parquet_err(format!("column `items.{name}` is missing")))
    };
    let product_id = field("product_id")?
        .as_string_opt::<i32>()
        .ok_or_else(|| parquet_err("column `items.product_id` is not utf8"))?;
    let position = field("position")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| parquet_err("column `items.position` is not int32"))?;
    let score = field("score")?
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| parquet_err("column `items.score` is not float64"))?;
    let features = field("features")?
        .as_list_opt::<i32>()
        .ok_or_else(|| parquet_err("column `items.features` is not a list"))?;
    let feature_values = features
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| parquet_err("column `items.features` is not a list of float32"))?;
    let offsets = items.offsets();
    let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
    let mut out = Vec::with_capacity(end - start);
    for j in start..end {
        if product_id.is_null(j) || position.is_null(j) || score.is_null(j) {
            return Err(null_in("items.element", i));
        }
        let position = u32::try_from(position.value(j))
            .map_err(|_| parquet_err(format!("row {i}: negative item position")))?;
        let mut row = Vec::new();
        if features.is_valid(j) {
            let fo = features.offsets();
            let (a, b) = (fo[j].as_usize(), fo[j + 1].as_usize());
            row.extend((a..b).map(|k| feature_values.value(k)));
        }
        out.push(ServedItem {
            product_id: CompactString::from(product_id.value(j)),
            position,
            score: score.value(j),
            features: row,
        });
    }
    Ok(out)
}

/// Decodes a Parquet file written by [`encode_events`] (or by any tool that kept the
/// column names and compatible types: strings may come back as large or view strings,
/// they are cast to the archive schema).
pub fn decode_events(bytes: Bytes) -> Result<Vec<ArchivedRow>, IngestError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(parquet_err)?
        .with_batch_size(8 * 1024)
        .build()
        .map_err(parquet_err)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(parquet_err)?;
        from_batch(&batch, &mut rows)?;
    }
    Ok(rows)
}

/// The columns of one batch, cast to the archive schema's types (`None`: not read).
struct Columns {
    cols: Vec<Option<ArrayRef>>,
}

impl Columns {
    /// Every column of the schema must be in `batch` (schema-2 columns may be absent).
    fn new(batch: &RecordBatch) -> Result<Columns, IngestError> {
        Columns::select(batch, |_| true)
    }

    /// The columns `wanted` says yes to; the others are left unread.
    fn select(batch: &RecordBatch, wanted: impl Fn(&str) -> bool) -> Result<Columns, IngestError> {
        let schema = archive_schema();
        let cols = schema
            .fields()
            .iter()
            .map(|f| {
                if !wanted(f.name()) {
                    return Ok(None);
                }
                let Some(col) = batch.column_by_name(f.name()) else {
                    if ADDED_IN_2.contains(&f.name().as_str()) {
                        // A schema-1 file: the served-list columns did not exist yet.
                        return Ok(Some(arrow::array::new_null_array(
                            f.data_type(),
                            batch.num_rows(),
                        )));
                    }
                    return Err(parquet_err(format!("column `{}` is missing", f.name())));
                };
                if col.data_type() == f.data_type() {
                    Ok(Some(col.clone()))
                } else {
                    arrow::compute::cast(col, f.data_type())
                        .map(Some)
                        .map_err(|e| {
                            parquet_err(format!(
                                "column `{}` has an unexpected type: {e}",
                                f.name()
                            ))
                        })
                }
            })
            .collect::<Result<_, IngestError>>()?;
        Ok(Columns { cols })
    }

    fn get(&self, name: &str) -> Result<&ArrayRef, IngestError> {
        let i = archive_schema().index_of(name).map_err(parquet_err)?;
        self.cols
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| parquet_err(format!("column `{name}` is missing")))
    }

    fn str(&self, name: &'static str) -> Result<StrCol<'_>, IngestError> {
        let a = self
            .get(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| parquet_err(format!("column `{name}` is not utf8")))?;
        Ok(StrCol { name, a })
    }

    fn prim<T: arrow::datatypes::ArrowPrimitiveType>(
        &self,
        name: &'static str,
    ) -> Result<PrimCol<'_, T>, IngestError> {
        let a = self
            .get(name)?
            .as_primitive_opt::<T>()
            .ok_or_else(|| parquet_err(format!("column `{name}` has the wrong type")))?;
        Ok(PrimCol { name, a })
    }

    fn list(&self, name: &'static str) -> Result<&GenericListArray<i32>, IngestError> {
        self.get(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| parquet_err(format!("column `{name}` is not a list")))
    }
}

struct StrCol<'a> {
    name: &'static str,
    a: &'a StringArray,
}

impl StrCol<'_> {
    fn opt(&self, i: usize) -> Option<&str> {
        self.a.is_valid(i).then(|| self.a.value(i))
    }
    fn req(&self, i: usize) -> Result<&str, IngestError> {
        self.opt(i).ok_or_else(|| null_in(self.name, i))
    }
    fn compact(&self, i: usize) -> Option<CompactString> {
        self.opt(i).map(CompactString::from)
    }
}

struct PrimCol<'a, T: arrow::datatypes::ArrowPrimitiveType> {
    name: &'static str,
    a: &'a PrimitiveArray<T>,
}

impl<T: arrow::datatypes::ArrowPrimitiveType> PrimCol<'_, T> {
    fn opt(&self, i: usize) -> Option<T::Native> {
        self.a.is_valid(i).then(|| self.a.value(i))
    }
    fn req(&self, i: usize) -> Result<T::Native, IngestError> {
        self.opt(i).ok_or_else(|| null_in(self.name, i))
    }
}

fn null_in(name: &str, row: usize) -> IngestError {
    parquet_err(format!(
        "column `{name}` is null at row {row} but is required"
    ))
}

/// The event columns of a batch (everything but the provenance columns).
struct EventColumns<'a> {
    event_id: StrCol<'a>,
    ts: PrimCol<'a, TimestampMillisecondType>,
    user_id: StrCol<'a>,
    session_id: StrCol<'a>,
    ty: StrCol<'a>,
    product_id: StrCol<'a>,
    category: StrCol<'a>,
    brand: StrCol<'a>,
    amount: PrimCol<'a, Int64Type>,
    currency: StrCol<'a>,
    quantity: PrimCol<'a, Int32Type>,
    query: StrCol<'a>,
    age_band: StrCol<'a>,
    gender: StrCol<'a>,
    region: StrCol<'a>,
    rec_id: StrCol<'a>,
    impressions: &'a GenericListArray<i32>,
    impression_values: &'a StringArray,
    model_version: StrCol<'a>,
    strategy: StrCol<'a>,
    items: &'a GenericListArray<i32>,
}

/// Columns of the archive that are not part of the [`Event`]: where the record came from
/// and its raw bytes. [`decode_event_batches`] does not read them.
const PROVENANCE: [&str; 5] = [
    "raw",
    "shard",
    "sequence_number",
    "sub_sequence_number",
    "arrival_ts",
];

impl<'a> EventColumns<'a> {
    fn new(c: &'a Columns) -> Result<EventColumns<'a>, IngestError> {
        let impressions = c.list("impressions")?;
        Ok(EventColumns {
            event_id: c.str("event_id")?,
            ts: c.prim::<TimestampMillisecondType>("ts")?,
            user_id: c.str("user_id")?,
            session_id: c.str("session_id")?,
            ty: c.str("type")?,
            product_id: c.str("product_id")?,
            category: c.str("category")?,
            brand: c.str("brand")?,
            amount: c.prim::<Int64Type>("price_amount")?,
            currency: c.str("price_currency")?,
            quantity: c.prim::<Int32Type>("quantity")?,
            query: c.str("query")?,
            age_band: c.str("age_band")?,
            gender: c.str("gender")?,
            region: c.str("region")?,
            rec_id: c.str("recommendation_id")?,
            impressions,
            impression_values: impressions
                .values()
                .as_string_opt::<i32>()
                .ok_or_else(|| parquet_err("column `impressions` is not a list of utf8"))?,
            model_version: c.str("model_version")?,
            strategy: c.str("strategy")?,
            items: c.list("items")?,
        })
    }

    /// The event of row `i`.
    fn event(&self, i: usize) -> Result<Event, IngestError> {
        let price = match (self.amount.opt(i), self.currency.opt(i)) {
            (Some(a), Some(cur)) => Some(Money::new(a, cur)),
            (None, None) => None,
            _ => {
                return Err(parquet_err(format!(
                    "row {i}: price_amount and price_currency must be both set or both null"
                )));
            }
        };
        let profile = Profile {
            age_band: self.age_band.compact(i),
            gender: self.gender.compact(i),
            region: self.region.compact(i),
        };
        let has_profile =
            profile.age_band.is_some() || profile.gender.is_some() || profile.region.is_some();
        let mut shown = Vec::new();
        if self.impressions.is_valid(i) {
            // Arrow guarantees offsets are non-negative and increasing.
            let offsets = self.impressions.offsets();
            let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
            shown.reserve(end - start);
            for j in start..end {
                if self.impression_values.is_null(j) {
                    return Err(null_in("impressions.element", i));
                }
                shown.push(CompactString::from(self.impression_values.value(j)));
            }
        }
        let quantity = self
            .quantity
            .opt(i)
            .map(|q| {
                u32::try_from(q).map_err(|_| parquet_err(format!("row {i}: quantity {q} < 0")))
            })
            .transpose()?;
        Ok(Event {
            event_id: CompactString::from(self.event_id.req(i)?),
            ts: Timestamp(self.ts.req(i)?),
            user_id: CompactString::from(self.user_id.req(i)?),
            session_id: self.session_id.compact(i),
            event_type: EventType::parse(self.ty.req(i)?),
            product_id: self.product_id.compact(i),
            category: self.category.compact(i),
            brand: self.brand.compact(i),
            price,
            quantity,
            query: self.query.opt(i).map(str::to_string),
            profile: has_profile.then_some(profile),
            recommendation_id: self.rec_id.compact(i),
            impressions: shown,
            items: read_items(self.items, i)?,
            model_version: self.model_version.compact(i),
            strategy: self.strategy.compact(i),
            product: None,
        })
    }
}

fn from_batch(batch: &RecordBatch, out: &mut Vec<ArchivedRow>) -> Result<(), IngestError> {
    let c = Columns::new(batch)?;
    let ev = EventColumns::new(&c)?;
    let raw = c.str("raw")?;
    let shard = c.str("shard")?;
    let seq = c.str("sequence_number")?;
    let sub_seq = c.prim::<Int32Type>("sub_sequence_number")?;
    let arrival = c.prim::<TimestampMillisecondType>("arrival_ts")?;

    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut event = ev.event(i)?;
        let seq_str = seq.req(i)?;
        let seq_no = SeqNo::parse(seq_str)
            .ok_or_else(|| parquet_err(format!("row {i}: `{seq_str}` is not a sequence number")))?;
        let sub = sub_seq.req(i)?;
        let sub = u32::try_from(sub)
            .map_err(|_| parquet_err(format!("row {i}: sub_sequence_number {sub} < 0")))?;
        let raw = raw.req(i)?;
        if event.event_type == EventType::Product {
            // The catalog entry has no columns of its own; the raw record holds it.
            #[derive(serde::Deserialize)]
            struct Entry {
                product: Option<crate::event::ProductInfo>,
            }
            event.product = serde_json::from_str::<Entry>(raw)
                .ok()
                .and_then(|e| e.product);
        }
        out.push(ArchivedRow {
            shard: ShardId::new(shard.req(i)?),
            seq: seq_no,
            sub_seq: sub,
            arrival: Timestamp(arrival.req(i)?),
            event,
            raw: Bytes::copy_from_slice(raw.as_bytes()),
        });
    }
    Ok(())
}

/// Decodes the events of a Parquet file of the archive one batch (at most `batch_rows`
/// rows, never more than a row group) at a time, handing each to `f`, without reading
/// the provenance columns (`raw`, `shard`, sequence numbers, arrival time): what a batch
/// job needs of the archive, at a fraction of [`decode_events`]' cost and memory. The
/// events are the same as `decode_events`' rows' `event`, in the same order, except that a
/// `product` event's catalog entry (kept only in `raw`) is not read.
pub fn decode_event_batches(
    bytes: Bytes,
    batch_rows: usize,
    mut f: impl FnMut(Vec<Event>) -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err)?;
    let roots: Vec<usize> = builder
        .parquet_schema()
        .root_schema()
        .get_fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !PROVENANCE.contains(&f.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_rows.max(1))
        .build()
        .map_err(parquet_err)?;
    for batch in reader {
        let batch = batch.map_err(parquet_err)?;
        let c = Columns::select(&batch, |name| !PROVENANCE.contains(&name))?;
        let ev = EventColumns::new(&c)?;
        let events = (0..batch.num_rows())
            .map(|i| ev.event(i))
            .collect::<Result<Vec<_>, _>>()?;
        f(events)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use parquet::basic::{LogicalType, TimeUnit as PqTimeUnit};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use proptest::prelude::*;

    /// A row whose raw bytes are the event's own JSON.
    pub(crate) fn row(seq: u64, event: Event) -> ArchivedRow {
        ArchivedRow {
            shard: ShardId::new("shardId-000000000000"),
            seq: SeqNo::from_u64(seq),
            sub_seq: 0,
            arrival: Timestamp(event.ts.0 + 250),
            raw: Bytes::from(event.to_json()),
            event,
        }
    }

    pub(crate) fn view(id: &str, ts: &str, user: &str, product: &str) -> Event {
        Event::new(
            id,
            Timestamp::parse_rfc3339(ts).unwrap(),
            user,
            EventType::View,
        )
        .with_product(product, Some("electronics.smartphone"))
    }

    pub(crate) fn full_row() -> ArchivedRow {
        let mut e = view("e-1", "2019-10-01T03:04:05.678Z", "u-1", "1004856").with_session("s-1");
        e.brand = Some("apple".into());
        e.price = Some(Money::new(13_048, "USD"));
        e.quantity = Some(2);
        e.recommendation_id = Some("rec-42".into());
        e.impressions = vec!["1004856".into(), "1005115".into(), "製品-ß-🛒".into()];
        e.profile = Some(Profile {
            age_band: Some("25-34".into()),
            gender: None,
            region: Some("eu-west".into()),
        });
        let raw = br#"{"event_id":"e-1","ts":"2019-10-01T03:04:05.678Z","user_id":"u-1","type":"view","product_id":"1004856","x_unknown":{"nested":[1,2,"\u00e9"]},"campaign":"\u2603"}"#;
        ArchivedRow {
            shard: ShardId::new("shardId-000000000007"),
            seq: SeqNo::parse("49590338271490256608559692538361571095921575989136588898").unwrap(),
            sub_seq: 17,
            arrival: Timestamp(1_569_899_046_000),
            event: e,
            raw: Bytes::from_static(raw),
        }
    }

    pub(crate) fn sparse_rows() -> Vec<ArchivedRow> {
        let mut search = Event::new(
            "e-2",
            Timestamp(1_569_899_047_000),
            "пользователь-😀",
            EventType::Search,
        );
        search.query = Some("chaussures rouges « été » \"quoted\" \\ tab\tend 👟".into());
        let mut other = Event::new(
            "e-3",
            Timestamp(1_569_899_048_000),
            "u-3",
            EventType::Other("wishlist".into()),
        );
        other.profile = Some(Profile {
            gender: Some("f".into()),
            ..Profile::default()
        });
        let mut purchase = view("e-4", "2019-10-01T03:59:59.999Z", "u-4", "p").with_session("s");
        purchase.event_type = EventType::Purchase;
        purchase.price = Some(Money::new(0, "EUR"));
        vec![row(5, search), row(6, other), row(7, purchase)]
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut rows = vec![full_row()];
        rows.extend(sparse_rows());
        let bytes = encode_events(&rows).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(decode_events(bytes).unwrap(), rows);
    }

    #[test]
    fn raw_keeps_unknown_fields_byte_for_byte() {
        let rows = vec![full_row()];
        let back = decode_events(encode_events(&rows).unwrap()).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&back[0].raw).unwrap();
        assert_eq!(raw["x_unknown"]["nested"][2], "é");
        assert_eq!(raw["campaign"], "☃");
        assert_eq!(back[0].raw, rows[0].raw);
    }

    #[test]
    fn empty_input_is_a_valid_empty_file() {
        let bytes = encode_events(&[]).unwrap();
        assert!(decode_events(bytes).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"PAR1",
            b"PAR1\0\0\0\0PAR1",
            b"not parquet at all",
        ] {
            let err = decode_events(Bytes::copy_from_slice(junk)).unwrap_err();
            assert!(matches!(err, IngestError::Parquet(_)), "{err}");
        }
        // A valid file truncated anywhere.
        let bytes = encode_events(&sparse_rows()).unwrap();
        for cut in [8, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_events(bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn file_uses_standard_types_snappy_and_statistics() {
        let mut rows = vec![full_row()];
        rows.extend(sparse_rows());
        let reader = SerializedFileReader::new(encode_events(&rows).unwrap()).unwrap();
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        let col = |name: &str| {
            (0..schema.num_columns())
                .map(|i| schema.column(i))
                .find(|c| c.path().string() == name)
                .unwrap_or_else(|| panic!("no column {name}"))
        };
        let utc_millis = LogicalType::Timestamp {
            is_adjusted_to_u_t_c: true,
            unit: PqTimeUnit::MILLIS,
        };
        assert_eq!(col("ts").logical_type_ref(), Some(&utc_millis));
        assert_eq!(col("arrival_ts").logical_type_ref(), Some(&utc_millis));
        for name in [
            "event_id",
            "user_id",
            "type",
            "raw",
            "sequence_number",
            "impressions.list.element",
        ] {
            assert_eq!(
                col(name).logical_type_ref(),
                Some(&LogicalType::String),
                "{name}"
            );
        }
        assert_eq!(
            col("price_amount").physical_type(),
            parquet::basic::Type::INT64
        );
        assert_eq!(col("quantity").physical_type(), parquet::basic::Type::INT32);
        assert_eq!(
            schema
                .root_schema()
                .get_fields()
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            archive_schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
        );
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        assert!(
            kv.iter()
                .any(|k| k.key == SCHEMA_VERSION_KEY && k.value.as_deref() == Some(SCHEMA_VERSION))
        );
        let rg = meta.row_group(0);
        for c in rg.columns() {
            assert_eq!(c.compression(), Compression::SNAPPY, "{}", c.column_path());
        }
        let ts_stats = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == "ts")
            .unwrap();
        assert!(
            ts_stats
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some())
        );
    }

    #[test]
    fn served_lists_round_trip_and_schema_1_files_still_read() {
        let items = vec![
            ServedItem {
                product_id: "p1".into(),
                position: 1,
                score: 0.75,
                features: vec![0.5, -1.0, 3.25],
            },
            ServedItem {
                product_id: "p2".into(),
                position: 2,
                score: 0.5,
                features: vec![],
            },
        ];
        let served = Event::recommendation(
            "r1",
            Timestamp(1_569_888_000_000),
            "u1",
            "personalized",
            Some("v3"),
            items,
        );
        let mut click = view("e2", "2019-10-01T00:00:05Z", "u1", "p1");
        click.event_type = EventType::Click;
        click.recommendation_id = Some("r1".into());
        let rows = vec![
            row(1, served.clone()),
            row(2, click),
            row(
                3,
                Event::recommendation(
                    "r2",
                    served.ts,
                    "u2",
                    "cold_start",
                    None,
                    served.items[1..].to_vec(),
                ),
            ),
        ];
        assert_eq!(decode_events(encode_events(&rows).unwrap()).unwrap(), rows);

        // A file of schema 1 (written before the served-list columns existed).
        let old: Vec<&ArchivedRow> = rows[1..2].iter().collect();
        let batch = to_batch(&archive_schema(), &old).unwrap();
        let v1 = batch
            .project(&(0..archive_schema().fields().len() - ADDED_IN_2.len()).collect::<Vec<_>>())
            .unwrap();
        assert!(v1.column_by_name("items").is_none());
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, v1.schema(), None).unwrap();
        w.write(&v1).unwrap();
        w.close().unwrap();
        assert_eq!(
            decode_events(Bytes::from(out)).unwrap(),
            rows[1..2].to_vec()
        );
    }

    #[test]
    fn files_without_the_arrow_schema_hint_decode_too() {
        // What a file rewritten by another tool looks like to the reader: no embedded
        // Arrow schema, so timestamps come back as "+00:00" and must be cast.
        let mut rows = vec![full_row()];
        rows.extend(sparse_rows());
        let refs: Vec<&ArchivedRow> = rows.iter().collect();
        let schema = archive_schema();
        let batch = to_batch(&schema, &refs).unwrap();
        let mut out = Vec::new();
        let options = parquet::arrow::arrow_writer::ArrowWriterOptions::new()
            .with_properties(writer_properties())
            .with_skip_arrow_metadata(true);
        let mut w = ArrowWriter::try_new_with_options(&mut out, schema, options).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(decode_events(Bytes::from(out)).unwrap(), rows);
    }

    #[test]
    fn rows_are_split_into_row_groups_of_128k() {
        let proto = row(1, view("e", "2019-10-01T00:00:00Z", "u", "p"));
        let rows: Vec<ArchivedRow> = (0..ROW_GROUP_ROWS as u64 + 3)
            .map(|i| ArchivedRow {
                seq: SeqNo::from_u64(i),
                ..proto.clone()
            })
            .collect();
        let bytes = encode_events(&rows).unwrap();
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let groups: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, vec![ROW_GROUP_ROWS as i64, 3]);
        assert_eq!(decode_events(bytes).unwrap().len(), rows.len());
    }

    #[test]
    fn unencodable_rows_are_detected() {
        let mut r = full_row();
        assert!(r.check_encodable().is_ok());
        r.event.quantity = Some(u32::MAX);
        assert_eq!(r.check_encodable().unwrap_err().kind(), "invalid_quantity");
        assert!(encode_events(&[r]).is_err());
    }

    fn arb_text() -> impl Strategy<Value = String> {
        // Any Unicode scalar except controls (validation rejects those), incl. astral.
        proptest::collection::vec(
            any::<char>().prop_filter("no controls", |c| !c.is_control()),
            1..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn arb_row() -> impl Strategy<Value = ArchivedRow> {
        (
            (
                arb_text(),
                Timestamp::MIN.0..Timestamp::MAX.0,
                arb_text(),
                proptest::option::of(arb_text()),
            ),
            (
                arb_text(),
                proptest::option::of(arb_text()),
                proptest::option::of(arb_text()),
            ),
            (
                proptest::option::of((0i64..1_000_000_000_000, "[A-Z]{3}")),
                proptest::option::of(1u32..10_000),
            ),
            (
                proptest::option::of(arb_text()),
                proptest::option::of(arb_text()),
                proptest::collection::vec(arb_text(), 0..4),
            ),
            (
                any::<u64>(),
                0u32..1000,
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
        )
            .prop_map(
                |(
                    (id, ts, user, session),
                    (ty, product, brand),
                    (price, qty),
                    (region, rec, imps),
                    (seq, sub, junk),
                )| {
                    let mut e = Event::new(&id, Timestamp(ts), &user, EventType::parse(&ty));
                    e.session_id = session.map(Into::into);
                    e.product_id = product.map(Into::into);
                    e.brand = brand.map(Into::into);
                    e.price = price.map(|(a, c)| Money::new(a, &c));
                    e.quantity = qty;
                    e.profile = region.map(|r| Profile {
                        region: Some(r.into()),
                        ..Profile::default()
                    });
                    e.recommendation_id = rec.map(Into::into);
                    e.impressions = imps.into_iter().map(Into::into).collect();
                    let mut raw = e.to_json();
                    // Unknown trailing field with arbitrary (valid UTF-8) content.
                    raw.pop();
                    raw.extend_from_slice(br#","zz_unknown":"#);
                    raw.extend(serde_json::to_vec(&String::from_utf8_lossy(&junk)).unwrap());
                    raw.push(b'}');
                    ArchivedRow {
                        shard: ShardId::new("shardId-000000000001"),
                        seq: SeqNo::from_u64(seq),
                        sub_seq: sub,
                        arrival: Timestamp(ts),
                        event: e,
                        raw: Bytes::from(raw),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any batch of rows survives encode → decode unchanged.
        #[test]
        fn any_rows_round_trip(rows in proptest::collection::vec(arb_row(), 0..20)) {
            let back = decode_events(encode_events(&rows).unwrap()).unwrap();
            prop_assert_eq!(back, rows);
        }
    }
}
