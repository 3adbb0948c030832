//! Protobuf messages into Arrow columns, from descriptors alone (no generated code).
//!
//! Mapping: bool, int32/sint32/sfixed32, int64/…, uint32/fixed32, uint64/fixed64,
//! float, double, string and bytes become the Arrow type of the same width; enums
//! become their value name (the number, as text, for a value the descriptor does not
//! know); messages become structs; repeated fields lists; maps Arrow maps (entries
//! sorted by key, so equal messages give equal files); `google.protobuf.Timestamp` a
//! UTC microsecond timestamp; the wrapper types (`Int64Value`, …) a nullable scalar.
//! `google.protobuf.Struct`/`Value`/`ListValue`, and a message type that contains itself
//! (from the point where it recurs), are written as their proto3 JSON text.
//!
//! Nulls: a message field that is unset, or a scalar field with explicit presence
//! (`optional`, oneof members, proto2) that is unset, is null. Other scalars carry
//! their value, which proto3 defines as the default when unset. Every Arrow field is
//! nullable so that nested structs under a null parent stay valid.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, ListArray, MapArray, StructArray};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer};
use arrow_schema::{DataType, Field, FieldRef, Fields, TimeUnit};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

/// The UTC zone name Arrow timestamps carry.
pub const UTC: &str = "UTC";

/// A UTC timestamp in microseconds.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// Columns for one message type: one Arrow field per message field, in field order.
pub struct MessageColumns {
    fields: Vec<(FieldSlot, ColumnBuilder)>,
}

impl MessageColumns {
    /// Builders for `message`'s fields.
    pub fn new(message: &MessageDescriptor) -> Self {
        let mut stack = vec![message.full_name().to_string()];
        Self {
            fields: message
                .fields()
                .map(|f| {
                    let builder = ColumnBuilder::for_field(&f, &mut stack);
                    (FieldSlot::new(f), builder)
                })
                .collect(),
        }
    }

    /// The Arrow fields, in the order of [`Self::finish`].
    pub fn arrow_fields(&self) -> Vec<FieldRef> {
        self.fields
            .iter()
            .map(|(f, b)| Arc::new(Field::new(f.desc.name(), b.data_type(), true)))
            .collect()
    }

    /// Appends one message as a row.
    pub fn append(&mut self, message: &DynamicMessage) {
        for (field, builder) in &mut self.fields {
            builder.append(field.value(message));
        }
    }

    /// The columns built so far; the builders start over empty.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.fields.iter_mut().map(|(_, b)| b.finish()).collect()
    }
}

/// A message field with what reading it needs, worked out once per schema rather than
/// per record (descriptor lookups dominated the profile).
struct FieldSlot {
    desc: FieldDescriptor,
    /// Unset reads as null (messages, explicit presence); else as `default`.
    nullable: bool,
    default: Value,
}

impl FieldSlot {
    fn new(desc: FieldDescriptor) -> Self {
        let repeated = desc.is_list() || desc.is_map();
        let nullable =
            !repeated && (desc.supports_presence() || matches!(desc.kind(), Kind::Message(_)));
        let default = Value::default_value_for_field(&desc);
        Self {
            desc,
            nullable,
            default,
        }
    }

    /// The field's value in `message`, or `None` where it is null (see the module docs).
    fn value<'a>(&'a self, message: &'a DynamicMessage) -> Option<&'a Value> {
        if message.has_field(&self.desc) {
            match message.get_field(&self.desc) {
                std::borrow::Cow::Borrowed(value) => Some(value),
                // Set fields are stored, so this arm is not taken.
                std::borrow::Cow::Owned(_) => Some(&self.default),
            }
        } else if self.nullable {
            None
        } else {
            Some(&self.default)
        }
    }
}

enum ColumnBuilder {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Enum(StringBuilder, prost_reflect::EnumDescriptor),
    Timestamp(TimestampMicrosecondBuilder),
    /// A wrapper type: the inner `value` field, null when the wrapper is unset.
    Wrapper(Box<ColumnBuilder>, FieldDescriptor),
    /// A recursive message, as proto3 JSON text.
    Json(StringBuilder),
    Struct {
        fields: Fields,
        children: Vec<(FieldSlot, ColumnBuilder)>,
        nulls: NullBufferBuilder,
    },
    List {
        item: FieldRef,
        values: Box<ColumnBuilder>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
    },
    Map {
        entries: FieldRef,
        keys: Box<ColumnBuilder>,
        values: Box<ColumnBuilder>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
    },
}

impl ColumnBuilder {
    fn for_field(field: &FieldDescriptor, stack: &mut Vec<String>) -> Self {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message")
            };
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let keys = Self::for_kind(&key_field.kind(), stack);
            let values = Self::for_kind(&value_field.kind(), stack);
            let entries = Arc::new(Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", keys.data_type(), false),
                    Field::new("value", values.data_type(), true),
                ])),
                false,
            ));
            return Self::Map {
                entries,
                keys: Box::new(keys),
                values: Box::new(values),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            };
        }
        let single = Self::for_kind(&field.kind(), stack);
        if field.is_list() {
            return Self::List {
                item: Arc::new(Field::new("item", single.data_type(), true)),
                values: Box::new(single),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            };
        }
        single
    }

    fn for_kind(kind: &Kind, stack: &mut Vec<String>) -> Self {
        match kind {
            Kind::Bool => Self::Bool(BooleanBuilder::new()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Self::Int32(Int32Builder::new()),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Self::Int64(Int64Builder::new()),
            Kind::Uint32 | Kind::Fixed32 => Self::UInt32(UInt32Builder::new()),
            Kind::Uint64 | Kind::Fixed64 => Self::UInt64(UInt64Builder::new()),
            Kind::Float => Self::Float32(Float32Builder::new()),
            Kind::Double => Self::Float64(Float64Builder::new()),
            Kind::String => Self::Utf8(StringBuilder::new()),
            Kind::Bytes => Self::Binary(BinaryBuilder::new()),
            Kind::Enum(e) => Self::Enum(StringBuilder::new(), e.clone()),
            Kind::Message(m) => Self::for_message(m, stack),
        }
    }

    fn for_message(message: &MessageDescriptor, stack: &mut Vec<String>) -> Self {
        let name = message.full_name();
        if name == "google.protobuf.Timestamp" {
            return Self::Timestamp(
                TimestampMicrosecondBuilder::new().with_timezone(UTC.to_string()),
            );
        }
        if is_wrapper(name) {
            let inner = message.get_field(1).expect("wrapper types have field 1");
            return Self::Wrapper(Box::new(Self::for_kind(&inner.kind(), stack)), inner);
        }
        if stack.iter().any(|s| s == name)
            || matches!(
                name,
                "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue"
            )
        {
            return Self::Json(StringBuilder::new());
        }
        stack.push(name.to_string());
        let children: Vec<(FieldSlot, ColumnBuilder)> = message
            .fields()
            .map(|f| {
                let builder = Self::for_field(&f, stack);
                (FieldSlot::new(f), builder)
            })
            .collect();
        stack.pop();
        let fields = children
            .iter()
            .map(|(f, b)| Field::new(f.desc.name(), b.data_type(), true))
            .collect();
        Self::Struct {
            fields,
            children,
            nulls: NullBufferBuilder::new(0),
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Boolean,
            Self::Int32(_) => DataType::Int32,
            Self::Int64(_) => DataType::Int64,
            Self::UInt32(_) => DataType::UInt32,
            Self::UInt64(_) => DataType::UInt64,
            Self::Float32(_) => DataType::Float32,
            Self::Float64(_) => DataType::Float64,
            Self::Utf8(_) | Self::Enum(..) | Self::Json(_) => DataType::Utf8,
            Self::Binary(_) => DataType::Binary,
            Self::Timestamp(_) => timestamp_type(),
            Self::Wrapper(inner, _) => inner.data_type(),
            Self::Struct { fields, .. } => DataType::Struct(fields.clone()),
            Self::List { item, .. } => DataType::List(item.clone()),
            Self::Map { entries, .. } => DataType::Map(entries.clone(), false),
        }
    }

    /// Appends a value, or a null for `None`. One match arm per column kind, each a
    /// line or two: splitting it would only spread the one dispatch over files.
    fn append(&mut self, value: Option<&Value>) {
        match self {
            Self::Bool(b) => b.append_option(value.and_then(Value::as_bool)),
            Self::Int32(b) => b.append_option(value.and_then(Value::as_i32)),
            Self::Int64(b) => b.append_option(value.and_then(Value::as_i64)),
            Self::UInt32(b) => b.append_option(value.and_then(Value::as_u32)),
            Self::UInt64(b) => b.append_option(value.and_then(Value::as_u64)),
            Self::Float32(b) => b.append_option(value.and_then(Value::as_f32)),
            Self::Float64(b) => b.append_option(value.and_then(Value::as_f64)),
            Self::Utf8(b) => b.append_option(value.and_then(Value::as_str)),
            Self::Binary(b) => b.append_option(value.and_then(Value::as_bytes)),
            Self::Enum(b, e) => match value.and_then(Value::as_enum_number) {
                Some(n) => match e.get_value(n) {
                    Some(v) => b.append_value(v.name()),
                    None => b.append_value(n.to_string()),
                },
                None => b.append_null(),
            },
            Self::Timestamp(b) => b.append_option(value.and_then(Value::as_message).map(|m| {
                let seconds = m
                    .get_field_by_number(1)
                    .and_then(|v| v.as_i64())
                    .unwrap_or(0);
                let nanos = m
                    .get_field_by_number(2)
                    .and_then(|v| v.as_i32())
                    .unwrap_or(0);
                seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(nanos) / 1_000)
            })),
            Self::Wrapper(inner, field) => {
                let message = value.and_then(Value::as_message);
                inner.append(message.map(|m| m.get_field(field)).as_deref());
            }
            Self::Json(b) => b.append_option(
                value
                    .and_then(Value::as_message)
                    .map(|m| serde_json::to_string(m).unwrap_or_default()),
            ),
            Self::Struct {
                children, nulls, ..
            } => match value.and_then(Value::as_message) {
                Some(message) => {
                    for (field, child) in children.iter_mut() {
                        child.append(field.value(message));
                    }
                    nulls.append_non_null();
                }
                None => {
                    for (_, child) in children.iter_mut() {
                        child.append(None);
                    }
                    nulls.append_null();
                }
            },
            Self::List {
                values,
                offsets,
                nulls,
                ..
            } => {
                let items = value.and_then(Value::as_list).unwrap_or_default();
                for item in items {
                    values.append(Some(item));
                }
                push_offset(offsets, items.len());
                match value {
                    Some(_) => nulls.append_non_null(),
                    None => nulls.append_null(),
                }
            }
            Self::Map {
                keys,
                values,
                offsets,
                nulls,
                ..
            } => {
                let mut entries: Vec<(&MapKey, &Value)> = value
                    .and_then(Value::as_map)
                    .map(|m| m.iter().collect())
                    .unwrap_or_default();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (key, item) in &entries {
                    keys.append(Some(&Value::from((*key).clone())));
                    values.append(Some(item));
                }
                push_offset(offsets, entries.len());
                match value {
                    Some(_) => nulls.append_non_null(),
                    None => nulls.append_null(),
                }
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::UInt32(b) => Arc::new(b.finish()),
            Self::UInt64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Utf8(b) | Self::Enum(b, _) | Self::Json(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Wrapper(inner, _) => inner.finish(),
            Self::Struct {
                fields,
                children,
                nulls,
            } => {
                let arrays = children.iter_mut().map(|(_, c)| c.finish()).collect();
                let len = nulls.len();
                let nulls = nulls.finish();
                if fields.is_empty() {
                    return Arc::new(StructArray::new_empty_fields(len, nulls));
                }
                Arc::new(StructArray::new(fields.clone(), arrays, nulls))
            }
            Self::List {
                item,
                values,
                offsets,
                nulls,
            } => {
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(
                    item.clone(),
                    offsets,
                    values.finish(),
                    nulls.finish(),
                ))
            }
            Self::Map {
                entries,
                keys,
                values,
                offsets,
                nulls,
                ..
            } => {
                let DataType::Struct(entry_fields) = entries.data_type() else {
                    unreachable!("map entries are a struct")
                };
                let entry_array = StructArray::new(
                    entry_fields.clone(),
                    vec![keys.finish(), values.finish()],
                    None,
                );
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(MapArray::new(
                    entries.clone(),
                    offsets,
                    entry_array,
                    nulls.finish(),
                    false,
                ))
            }
        }
    }
}

fn push_offset(offsets: &mut Vec<i32>, added: usize) {
    let last = *offsets.last().expect("offsets start with 0");
    offsets.push(last + i32::try_from(added).expect("fewer than 2^31 items per column chunk"));
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}
