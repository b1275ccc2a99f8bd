//! Generates the tonic/prost code for `hostagent.v1` and `envd.v1` with the pure-Rust
//! protobuf compiler `protox` (no `protoc` needed) and writes the encoded file
//! descriptor set to `$OUT_DIR/wrenn_descriptor.bin` for gRPC reflection.

use std::{env, error::Error, fs, path::PathBuf};

use prost::Message;
use prost_types::FileDescriptorSet;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "proto/hostagent/v1/hostagent.proto",
    "proto/envd/v1/process.proto",
    "proto/envd/v1/filesystem.proto",
    "proto/envd/v1/system.proto",
    "proto/envd/v1/tunnel.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // protox resolves `google/protobuf/*.proto` from its built-in copies.
    let fds = protox::compile(PROTOS, [PROTO_ROOT])?;

    // `file_descriptor_set_path` is only honoured by prost-build when it runs `protoc`
    // itself; with `compile_fds` the set has to be written here.
    fs::write(out_dir.join("wrenn_descriptor.bin"), fds.encode_to_vec())?;

    // hostagent.v1: clients get tonic's usual `connect(endpoint)` constructor.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(only_package(&fds, "hostagent.v1"))?;

    // envd.v1: `Process.Connect` is an RPC, whose generated client method `connect`
    // would collide with the transport constructor of the same name, so envd clients
    // are built from a `Channel` with `new` instead. File contents and tunnel bytes are
    // `Bytes`: relayed between the control plane, the host agent and envd without a copy
    // per hop.
    tonic_prost_build::configure()
        .bytes(".envd.v1.WriteFileRequest.data")
        .bytes(".envd.v1.ReadFileResponse.data")
        .bytes(".envd.v1.TunnelRequest.data")
        .bytes(".envd.v1.TunnelResponse.data")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(only_package(&fds, "envd.v1"))?;
    Ok(())
}

/// The files of `package` plus the well-known types they import (which prost maps to
/// `prost_types` instead of generating them).
fn only_package(fds: &FileDescriptorSet, package: &str) -> FileDescriptorSet {
    FileDescriptorSet {
        file: fds
            .file
            .iter()
            .filter(|f| f.package() == package || f.package() == "google.protobuf")
            .cloned()
            .collect(),
    }
}
