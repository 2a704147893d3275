//! Compiles `proto/*.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("veil.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all, clippy::pedantic, missing_docs)]")
        .server_mod_attribute(".", "#[allow(clippy::all, missing_docs, unreachable_pub)]")
        .client_mod_attribute(".", "#[allow(clippy::all, missing_docs, unreachable_pub)]")
        .compile_fds(descriptors)?;
    Ok(())
}
