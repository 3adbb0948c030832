//! Event payloads as the sink decodes them with a descriptor set (protobuf and proto3
//! JSON) into typed columns: a range with arbitrary payloads is encoded, and each
//! payload either becomes a row or a dead letter, never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use weir::sink::buffer::SinkRecord;
use weir::sink::encode::Encoder;
use weir_crds::SinkSpec;
use weir_crds::settings::SinkSettings;
use weir_crds::sink::{PayloadEncoding, TypeSchema};

static ENCODER: LazyLock<Encoder> = LazyLock::new(|| {
    let set = protox::compile(
        ["shop.proto"],
        [concat!(env!("CARGO_MANIFEST_DIR"), "/../dataplane/tests/data")],
    )
    .expect("the test schema compiles");
    let pool = prost_reflect::DescriptorPool::decode(set.encode_to_vec().as_slice())
        .expect("a descriptor pool");
    let mut spec = SinkSpec::default();
    // The descriptors are the pool given below; the file named is never read.
    spec.schema.descriptor_set = Some("given-as-a-pool.binpb".into());
    for (event_type, message, encoding) in [
        ("view", "shop.v1.PageView", PayloadEncoding::Protobuf),
        ("view_json", "shop.v1.PageView", PayloadEncoding::Json),
        ("node", "shop.v1.Node", PayloadEncoding::Protobuf),
    ] {
        spec.schema.types.insert(
            event_type.into(),
            TypeSchema {
                message: message.into(),
                encoding,
            },
        );
    }
    let settings = SinkSettings::try_from(spec).expect("a valid sink spec");
    Encoder::with_pool(&settings, Some(&pool)).expect("the encoder builds")
});

fuzz_target!(|data: &[u8]| {
    let records: Vec<SinkRecord> = ["view", "view_json", "node", "raw"]
        .iter()
        .enumerate()
        .map(|(i, event_type)| SinkRecord {
            offset: i as i64,
            payload: data.to_vec(),
            event_type: (*event_type).into(),
            ..Default::default()
        })
        .collect();
    let range = ENCODER.encode("t", 0, 0.into(), &records).expect("encoding never fails on payloads");
    let rows: usize = range.files.iter().filter(|f| !f.dead_letter).map(|f| f.records).sum();
    assert_eq!(rows + range.dead_letters.len(), records.len());
});
