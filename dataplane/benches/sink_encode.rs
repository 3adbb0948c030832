//! The sink's pure encoding: a flushed range of records into Parquet files.
//! `cargo bench -p weir --bench sink_encode`. Throughput is input bytes (payloads).

// The weir binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use weir::sink::buffer::SinkRecord;
use weir::sink::encode::Encoder;
use weir_crds::SinkSpec;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{Compression, FileFormat, PayloadEncoding, TypeSchema};

const RECORDS: usize = 20_000;

fn records(payload: impl Fn(usize) -> Vec<u8>) -> Vec<SinkRecord> {
    (0..RECORDS)
        .map(|i| SinkRecord {
            offset: i as i64,
            timestamp_ms: Some(1_795_320_000_000),
            key: Some(format!("user-{}", i % 1000).into_bytes()),
            payload: payload(i),
            event_type: ["page_view", "click"][i % 2].into(),
            req_guid: Some(format!("req-{}", i / 100)),
            conn_group: Some("web".into()),
            tenant: None,
            sent_time_us: Some(1_795_320_000_000_000),
            receive_time_us: Some(1_795_320_000_000_000 + i as i64),
            source_position: None,
        })
        .collect()
}

fn input_bytes(records: &[SinkRecord]) -> u64 {
    records.iter().map(|r| r.payload.len() as u64).sum()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sink_encode_20000_records");
    group.sample_size(20);
    // Raw payloads (the default): 200-byte JSON-ish events.
    let raw = records(|i| {
        format!(
            "{{\"page\":\"/products/{}\",\"referrer\":\"https://example.com/search?q={}\",\"user_agent\":\"Mozilla/5.0 (X11; Linux x86_64)\",\"n\":{i}}}",
            i % 500,
            i % 97
        )
        .into_bytes()
    });
    group.throughput(Throughput::Bytes(input_bytes(&raw)));
    for (name, format, compression) in [
        ("parquet_zstd_raw", FileFormat::Parquet, Compression::Zstd),
        (
            "parquet_snappy_raw",
            FileFormat::Parquet,
            Compression::Snappy,
        ),
        ("jsonl_gzip_raw", FileFormat::Jsonl, Compression::Gzip),
    ] {
        let mut spec = SinkSpec::default();
        spec.format.kind = format;
        spec.format.compression = Some(compression);
        let encoder = Encoder::new(&SinkSettings::try_from(spec).unwrap()).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| encoder.encode("t", 0, 0.into(), &raw).unwrap())
        });
    }

    // Typed: protobuf payloads decoded into nested columns.
    let set = protox::compile(
        ["shop.proto"],
        [concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")],
    )
    .unwrap();
    let pool = DescriptorPool::decode(set.encode_to_vec().as_slice()).unwrap();
    let desc = pool.get_message_by_name("shop.v1.PageView").unwrap();
    let typed = records(|i| {
        let json = format!(
            r#"{{"flag":true,"i64":"{i}","page":"/products/{}","kind":"KIND_VIEW","item":{{"sku":"sku-{}","quantity":2,"price":9.5}},"tags":["a","b"],"counts":{{"x":"1"}},"at":"2026-11-22T04:05:06Z"}}"#,
            i % 500,
            i % 50
        );
        let mut de = serde_json::Deserializer::from_str(&json);
        DynamicMessage::deserialize(desc.clone(), &mut de)
            .unwrap()
            .encode_to_vec()
    });
    let mut spec = SinkSpec::default();
    // The descriptors are the pool given below; the file named is never read.
    spec.schema.descriptor_set = Some("given-as-a-pool.binpb".into());
    for event_type in ["page_view", "click"] {
        spec.schema.types.insert(
            event_type.into(),
            TypeSchema {
                message: "shop.v1.PageView".into(),
                encoding: PayloadEncoding::Protobuf,
            },
        );
    }
    let encoder = Encoder::with_pool(&SinkSettings::try_from(spec).unwrap(), Some(&pool)).unwrap();
    group.throughput(Throughput::Bytes(input_bytes(&typed)));
    group.bench_function("parquet_zstd_typed_protobuf", |b| {
        b.iter(|| encoder.encode("t", 0, 0.into(), &typed).unwrap())
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
