//! Generates the gRPC code from `proto/` with protox (pure Rust, no `protoc` needed) and
//! tonic-prost-build. The generated code and the encoded file descriptor set (for server
//! reflection) stay in OUT_DIR.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/nexus/billing/v1/billing.proto",
    "proto/nexus/integrations/v1/integrations.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds ignores file_descriptor_set_path, so the set is written here for reflection.
    fs::write(out_dir.join("nexus_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs a later issue implements answer UNIMPLEMENTED without hand-written stubs.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
