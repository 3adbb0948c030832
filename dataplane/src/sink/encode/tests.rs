use super::*;
use weir_crds::SinkSpec;

fn settings(spec: SinkSpec) -> SinkSettings {
    SinkSettings::try_from(spec).expect("a valid spec")
}
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type,
    UInt64Type,
};
use arrow_array::{Array, StructArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message as _;
use prost_reflect::Value;
use weir_crds::sink::TypeSchema;

fn shop_pool() -> DescriptorPool {
    let set = protox::compile(
        ["shop.proto"],
        [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")],
    )
    .unwrap();
    DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap()
}

/// A spec typing `page_view`; its descriptor set is the pool the tests pass to
/// `with_pool`, so the file named here is never read.
fn spec_for(encoding: PayloadEncoding) -> SinkSpec {
    let mut spec = SinkSpec::default();
    spec.schema.descriptor_set = Some("given-as-a-pool.binpb".into());
    spec.schema.types.insert(
        "page_view".into(),
        TypeSchema {
            message: "shop.v1.PageView".into(),
            encoding,
        },
    );
    spec
}

fn record(offset: i64, event_type: &str, payload: Vec<u8>) -> SinkRecord {
    SinkRecord {
        offset,
        timestamp_ms: Some(1_795_320_306_000),
        key: Some(b"k".to_vec()),
        payload,
        event_type: event_type.into(),
        req_guid: Some("g".into()),
        conn_group: None,
        tenant: None,
        sent_time_us: Some(1),
        receive_time_us: Some(1_795_320_306_000_000),
        source_position: None,
    }
}

/// Each file of a range: its path and how many records it holds.
fn paths_and_records(range: &EncodedRange) -> Vec<(&str, usize)> {
    range
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.records))
        .collect()
}

fn full_page_view(pool: &DescriptorPool) -> DynamicMessage {
    let desc = pool.get_message_by_name("shop.v1.PageView").unwrap();
    let json = r#"{
        "flag": true, "i32": -5, "i64": "-6", "u32": 7, "u64": "18446744073709551615",
        "s32": -8, "s64": "-9", "fx32": 10, "fx64": "11", "sfx32": -12, "sfx64": "-13",
        "fl": 1.5, "db": 2.25, "page": "/home", "blob": "AAE=", "kind": "KIND_CLICK",
        "item": {"sku": "a", "quantity": 2, "price": 9.5},
        "items": [{"sku": "b"}, {"sku": "c", "quantity": 3}],
        "tags": ["x", "y"], "counts": {"zeta": "2", "alpha": "1"},
        "at": "2026-11-22T04:05:06.123456789Z", "maybe": "42", "note": "n",
        "tree": {"name": "root", "children": [{"name": "leaf"}]},
        "extra": {"k": [1, "two"]}
    }"#;
    let mut de = serde_json::Deserializer::from_str(json);
    DynamicMessage::deserialize(desc, &mut de).unwrap()
}

fn read_parquet(bytes: &Bytes) -> RecordBatch {
    let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    assert!(reader.next().is_none());
    batch
}

#[test]
fn every_protobuf_type_becomes_its_column() {
    let pool = shop_pool();
    let encoder =
        Encoder::with_pool(&settings(spec_for(PayloadEncoding::Protobuf)), Some(&pool)).unwrap();
    let full = full_page_view(&pool).encode_to_vec();
    let empty = Vec::new();
    let records = [
        record(10, "page_view", full),
        record(11, "page_view", empty),
    ];
    let range = encoder.encode("t", 0, 10.into(), &records).unwrap();
    assert!(range.dead_letters.is_empty());
    assert_eq!(range.files.len(), 1);
    assert_eq!(
        range.files[0].path,
        "event_type=page_view/dt=2026-11-22/hour=04/t+0+00000000000000000010.parquet"
    );
    let batch = read_parquet(&range.files[0].bytes);
    assert_eq!(batch.num_rows(), 2);
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    assert_eq!(
        col("_offset").as_primitive::<Int64Type>().values(),
        &[10, 11]
    );
    assert!(col("flag").as_boolean().value(0));
    assert_eq!(col("i32").as_primitive::<Int32Type>().value(0), -5);
    assert_eq!(col("i64").as_primitive::<Int64Type>().value(0), -6);
    assert_eq!(col("u32").as_primitive::<UInt32Type>().value(0), 7);
    assert_eq!(col("u64").as_primitive::<UInt64Type>().value(0), u64::MAX);
    assert_eq!(col("s32").as_primitive::<Int32Type>().value(0), -8);
    assert_eq!(col("s64").as_primitive::<Int64Type>().value(0), -9);
    assert_eq!(col("fx32").as_primitive::<UInt32Type>().value(0), 10);
    assert_eq!(col("fx64").as_primitive::<UInt64Type>().value(0), 11);
    assert_eq!(col("sfx32").as_primitive::<Int32Type>().value(0), -12);
    assert_eq!(col("sfx64").as_primitive::<Int64Type>().value(0), -13);
    assert_eq!(col("fl").as_primitive::<Float32Type>().value(0), 1.5);
    assert_eq!(col("db").as_primitive::<Float64Type>().value(0), 2.25);
    assert_eq!(col("page").as_string::<i32>().value(0), "/home");
    assert_eq!(col("blob").as_binary::<i32>().value(0), &[0, 1]);
    assert_eq!(col("kind").as_string::<i32>().value(0), "KIND_CLICK");
    // Unset proto3 scalars carry their default; the unset enum its zero name.
    assert_eq!(col("i32").as_primitive::<Int32Type>().value(1), 0);
    assert_eq!(col("kind").as_string::<i32>().value(1), "KIND_UNSPECIFIED");

    let item = col("item");
    let item: &StructArray = item.as_struct();
    assert_eq!(
        item.column_by_name("sku")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "a"
    );
    assert_eq!(
        item.column_by_name("price")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        9.5
    );
    assert!(item.is_null(1), "an unset message is null");

    let items = col("items");
    let items = items.as_list::<i32>();
    assert_eq!(items.value_length(0), 2);
    assert_eq!(items.value_length(1), 0);
    let first = items.value(0);
    assert_eq!(
        first
            .as_struct()
            .column_by_name("sku")
            .unwrap()
            .as_string::<i32>()
            .value(1),
        "c"
    );
    let tags = col("tags");
    assert_eq!(
        tags.as_list::<i32>().value(0).as_string::<i32>().value(1),
        "y"
    );

    let counts = col("counts");
    let counts = counts.as_map();
    let keys = counts.value(0);
    let keys = keys.column(0).as_string::<i32>();
    assert_eq!(
        (keys.value(0), keys.value(1)),
        ("alpha", "zeta"),
        "map entries sorted"
    );

    let at = col("at");
    assert_eq!(
        at.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        at.as_primitive::<TimestampMicrosecondType>().value(0),
        1_795_320_306_123_456
    );
    assert!(at.is_null(1));
    assert_eq!(col("maybe").as_primitive::<Int64Type>().value(0), 42);
    assert!(col("maybe").is_null(1), "an unset wrapper is null");
    assert_eq!(col("note").as_string::<i32>().value(0), "n");
    assert!(col("note").is_null(1), "an unset optional is null");

    let tree = col("tree");
    let tree = tree.as_struct();
    let children = tree.column_by_name("children").unwrap();
    let children = children.as_list::<i32>().value(0);
    assert_eq!(
        children.as_string::<i32>().value(0),
        r#"{"name":"leaf"}"#,
        "a recursive message recurs as JSON"
    );
    let extra = col("extra");
    assert_eq!(extra.data_type(), &DataType::Utf8, "Struct is recursive");
    assert_eq!(extra.as_string::<i32>().value(0), r#"{"k":[1.0,"two"]}"#);
}

#[test]
fn json_payloads_decode_with_the_same_descriptors() {
    let pool = shop_pool();
    let encoder =
        Encoder::with_pool(&settings(spec_for(PayloadEncoding::Json)), Some(&pool)).unwrap();
    let records = [
        record(
            0,
            "page_view",
            br#"{"page":"/a","kind":"KIND_VIEW","i64":"3"}"#.to_vec(),
        ),
        record(1, "page_view", br#"{"page": 5}"#.to_vec()),
        record(2, "page_view", br#"{"nope": 1}"#.to_vec()),
        record(3, "page_view", br#"{"page":"/b"} trailing"#.to_vec()),
    ];
    let range = encoder.encode("t", 1, 0.into(), &records).unwrap();
    let reasons: Vec<(usize, &str)> = range
        .dead_letters
        .iter()
        .map(|d| (d.index, d.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for (_, reason) in &reasons {
        assert!(
            reason.starts_with("payload is not valid JSON for shop.v1.PageView"),
            "{reason}"
        );
    }
    assert!(reasons[1].1.contains("nope"), "{}", reasons[1].1);
    let data = &range.files[0];
    let batch = read_parquet(&data.bytes);
    assert_eq!(batch.num_rows(), 1);
    let page = batch.column_by_name("page").unwrap();
    assert_eq!(page.as_string::<i32>().value(0), "/a");
    // The dead letters of the range: one JSON line each, with the reason.
    let dead = range.files.iter().find(|f| f.dead_letter).unwrap();
    assert_eq!(
        dead.path,
        "_dead_letter/topic=t/t+1+00000000000000000000.jsonl"
    );
    let lines: Vec<serde_json::Value> = dead
        .bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["_offset"], 1);
    assert!(lines[0]["reason"].as_str().unwrap().contains("PageView"));
    assert!(lines[0]["payload_base64"].is_string());
}

#[test]
fn a_bad_protobuf_payload_is_dead_lettered_with_the_reason() {
    let pool = shop_pool();
    let encoder =
        Encoder::with_pool(&settings(spec_for(PayloadEncoding::Protobuf)), Some(&pool)).unwrap();
    let records = [
        record(0, "page_view", vec![0xff, 0xff, 0xff]),
        record(1, "other", b"raw".to_vec()),
    ];
    let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
    assert_eq!(range.dead_letters.len(), 1);
    assert!(
        range.dead_letters[0]
            .reason
            .starts_with("payload is not a valid protobuf shop.v1.PageView"),
        "{}",
        range.dead_letters[0].reason
    );
    // The untyped event keeps its bytes in `payload`.
    let data = range.files.iter().find(|f| !f.dead_letter).unwrap();
    assert!(data.path.starts_with("event_type=other/"));
    let batch = read_parquet(&data.bytes);
    let payload = batch.column_by_name(RAW_PAYLOAD_COLUMN).unwrap();
    assert_eq!(payload.as_binary::<i32>().value(0), b"raw");
}

#[test]
fn a_range_splits_by_type_and_hour_and_encodes_deterministically() {
    let encoder = Encoder::new(&settings(SinkSpec::default())).unwrap();
    let hour = 3_600_000_000;
    let mut records = Vec::new();
    for (offset, (event_type, t)) in [("a", 0), ("b", 0), ("a", hour), ("a", 1)]
        .into_iter()
        .enumerate()
    {
        let mut r = record(offset as i64, event_type, vec![offset as u8]);
        r.receive_time_us = Some(1_795_320_000_000_000 + t);
        records.push(r);
    }
    let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
    let paths = paths_and_records(&range);
    assert_eq!(
        paths,
        vec![
            (
                "event_type=a/dt=2026-11-22/hour=04/t+0+00000000000000000000.parquet",
                2
            ),
            (
                "event_type=a/dt=2026-11-22/hour=05/t+0+00000000000000000000.parquet",
                1
            ),
            (
                "event_type=b/dt=2026-11-22/hour=04/t+0+00000000000000000000.parquet",
                1
            ),
        ]
    );
    let again = encoder.encode("t", 0, 0.into(), &records).unwrap();
    for (a, b) in range.files.iter().zip(&again.files) {
        assert_eq!(a.bytes, b.bytes, "same records, same bytes");
    }
}

#[test]
fn a_tenant_is_a_column_and_the_first_partition_level() {
    let encoder = Encoder::new(&settings(SinkSpec::default())).unwrap();
    let mut records = Vec::new();
    for (offset, tenant) in [Some("acme"), Some("globex"), None, Some("acme")]
        .into_iter()
        .enumerate()
    {
        let mut r = record(offset as i64, "a", vec![offset as u8]);
        r.tenant = tenant.map(str::to_string);
        records.push(r);
    }
    let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
    let paths = paths_and_records(&range);
    let name = "dt=2026-11-22/hour=04/t+0+00000000000000000000.parquet";
    assert_eq!(
        paths,
        vec![
            (format!("event_type=a/{name}").as_str(), 1),
            (format!("tenant=acme/event_type=a/{name}").as_str(), 2),
            (format!("tenant=globex/event_type=a/{name}").as_str(), 1),
        ]
    );
    let acme = read_parquet(&range.files[1].bytes);
    let column = acme
        .column_by_name("_tenant")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert!(column.iter().all(|t| t == Some("acme")));
}

#[test]
fn json_lines_carry_metadata_and_payloads() {
    let mut spec = SinkSpec::default();
    spec.format.kind = FileFormat::Jsonl;
    let encoder = Encoder::new(&settings(spec)).unwrap();
    let records = [
        record(0, "a", br#"{"x":1}"#.to_vec()),
        record(1, "a", vec![0xff]),
    ];
    let range = encoder.encode("t", 0, 0.into(), &records).unwrap();
    let file = &range.files[0];
    assert!(file.path.ends_with("t+0+00000000000000000000.jsonl.gz"));
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(file.bytes.as_ref()),
        &mut text,
    )
    .unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["payload"]["x"], 1);
    assert_eq!(lines[0]["_topic"], "t");
    assert_eq!(lines[0]["_key"], "aw==");
    assert!(lines[0].get("_tenant").is_none(), "no tenant, no key");
    assert_eq!(lines[1]["payload_base64"], "/w==");
    assert!(lines[1].get("payload").is_none());
}

#[test]
fn schema_errors_name_the_setting() {
    let pool = shop_pool();
    let mut spec = spec_for(PayloadEncoding::Protobuf);
    spec.schema.types.get_mut("page_view").unwrap().message = "shop.v1.Nope".into();
    let error = Encoder::with_pool(&settings(spec), Some(&pool))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        "schema.types.page_view.message: \"shop.v1.Nope\" is not in the descriptor set"
    );
    let error = load_descriptor_set("/nonexistent.pb")
        .err()
        .unwrap()
        .to_string();
    assert!(error.starts_with("schema.descriptorSet: cannot load /nonexistent.pb"));
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), b"\xff\xff").unwrap();
    let error = load_descriptor_set(garbage.path().to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("not a protobuf FileDescriptorSet"),
        "{error}"
    );
    let _ = Value::Bool(true);
}
