//! Compiles the .proto files with protox (a protobuf compiler in Rust), so building
//! Weir needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "raystack/raccoon/v1beta1/raccoon.proto",
        "weir/v1/events.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Event payloads become `Bytes`: decoding slices the request buffer instead of copying.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
