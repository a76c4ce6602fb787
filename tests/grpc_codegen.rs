//! The gRPC example's generated code is committed, so that running it needs no `protoc`
//! and no build script: `examples/grpc/orders.v1.rs` (messages, client and server, by
//! tonic-prost-build) and `examples/grpc/orders.v1.bin` (the encoded descriptor set that
//! server reflection serves), both from `examples/proto/orders/v1/orders.proto`.
//!
//! This test compiles the proto again with protox (a protobuf compiler in Rust) and
//! tonic-prost-build into a temporary directory and fails when the committed files
//! differ. `BLESS=1 cargo test --test grpc_codegen` writes them instead.

use std::path::{Path, PathBuf};

use prost::Message;

#[path = "common/unique.rs"]
mod unique;

const PROTO: &str = "orders/v1/orders.proto";
/// What tonic-prost-build names the file of the package `orders.v1`.
const CODE: &str = "orders.v1.rs";
const DESCRIPTORS: &str = "orders.v1.bin";

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The code and the encoded descriptor set, generated afresh.
fn generate(root: &Path) -> (Vec<u8>, Vec<u8>) {
    let descriptors = protox::compile([PROTO], [root.join("examples/proto")])
        .unwrap_or_else(|e| panic!("{PROTO}: {e}"));
    let out = TempDir(std::env::temp_dir().join(unique::unique_name("grpc_codegen")));
    std::fs::create_dir_all(&out.0).unwrap();
    tonic_prost_build::configure()
        .out_dir(&out.0)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors.clone())
        .unwrap();
    let code = std::fs::read(out.0.join(CODE)).unwrap();
    (code, descriptors.encode_to_vec())
}

#[test]
fn committed_grpc_code_is_what_the_proto_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("examples/grpc");
    let (code, descriptors) = generate(root);
    let files = [(CODE, code), (DESCRIPTORS, descriptors)];
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
            eprintln!("wrote examples/grpc/{name}");
        }
        return;
    }
    let stale: Vec<String> = files
        .iter()
        .filter(|(name, bytes)| std::fs::read(dir.join(name)).ok().as_ref() != Some(bytes))
        .map(|(name, _)| format!("examples/grpc/{name}"))
        .collect();
    assert!(
        stale.is_empty(),
        "{}: not what examples/proto/{PROTO} generates; write them again with \
         `BLESS=1 cargo test --test grpc_codegen` and commit them",
        stale.join(" and ")
    );
}
