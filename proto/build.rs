//! Compiles the `.proto` files with protox (a protobuf compiler in Rust, so no `protoc` is
//! needed) and generates their Rust types with prost-build.

use std::path::Path;

const ROOT: &str = "proto";

const FILES: &[&str] = &[
    "platform/events/v1/common.proto",
    "platform/events/v1/tenant.proto",
    "platform/events/v1/user.proto",
    "platform/events/v1/session.proto",
    "platform/events/v1/api_key.proto",
    "platform/events/v1/service_account.proto",
    "platform/events/v1/email_claim.proto",
    "platform/events/v1/idempotency.proto",
    "platform/events/v1/envelope.proto",
    "platform/audit/v1/export.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={ROOT}");
    for file in FILES {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(ROOT).join(file).display()
        );
    }
    let descriptors = protox::compile(FILES, [ROOT])?;
    prost_build::Config::new()
        // Deterministic encoding: map entries in key order.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
