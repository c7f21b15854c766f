//! Compiles the protobuf contracts with protox (a pure-Rust protobuf compiler),
//! so building Meshfed never needs a hand-installed `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/identity.proto",
        "proto/federation.proto",
        "proto/discovery.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
