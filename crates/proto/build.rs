//! Compiles `proto/` with protox (no system protoc), writes the encoded descriptor set with
//! custom options preserved, and generates prost messages and tonic stubs.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = proto_files(&proto_root)?;

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;

    // `encode_file_descriptor_set` keeps extension options (the method policy, http rules)
    // that a round trip through `prost_types` would drop.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("palisade_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .btree_map(".palisade.compliance.v1.AuditEvent.attributes")
        .btree_map(".palisade.identity.v1.Tenant")
        // Tenant data checksums hash the records' encoding, which must be deterministic.
        .btree_map(".palisade.identity.v1.ExportedTenant")
        .include_file("palisade_includes.rs")
        .compile_fds(compiler.file_descriptor_set())?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    Ok(())
}

/// Every `.proto` under the root, as paths relative to it, in a stable order.
fn proto_files(root: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                let relative = path.strip_prefix(root).expect("walked from root");
                found.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found.sort();
    Ok(found)
}
