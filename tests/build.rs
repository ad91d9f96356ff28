//! Generates, for the end-to-end tests' reference consumer, Rust types from the published
//! `.proto` files alone (`proto/proto/**/*.proto`), the way a downstream service would:
//! protox compiles them (no `protoc` needed) and prost-build generates the types. Nothing
//! here comes from the platform's crates.

use std::path::{Path, PathBuf};

const ROOT: &str = "../proto/proto";

/// Every `.proto` file under `dir`, as paths relative to `ROOT`.
fn proto_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={ROOT}");
    let mut files = Vec::new();
    proto_files(Path::new(ROOT), &mut files)?;
    files.sort();
    let mut relative = Vec::with_capacity(files.len());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        relative.push(file.strip_prefix(ROOT)?.to_path_buf());
    }
    let descriptors = protox::compile(relative, [ROOT])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
