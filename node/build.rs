//! Builds the web page's SHA-256 module (node/web/sha256-wasm: the `sha2` crate compiled to
//! wasm32-unknown-unknown) into OUT_DIR, where `shell::web` embeds it. Browsers on plain
//! http:// LAN pages have no `crypto.subtle`, so the page hashes with this module.
//!
//! The nested cargo runs with the outer build's compiler but none of its flags or wrappers
//! (clippy's driver, a fuzzer's sanitizer flags are for the host crates, not for the page),
//! `--locked` against the module's own lock file, in a target directory under OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

// The one copy of "add the wasm target if rustup lacks it", shared with `fsnode plugins build`:
// a fresh machine whose toolchain came without the target still builds with `cargo run`.
mod wasm_target {
    include!("src/wasm_target.rs");
}
use wasm_target::WASM_TARGET as TARGET;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let crate_dir = manifest_dir.join("web/sha256-wasm");
    println!("cargo:rerun-if-changed={}", crate_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        crate_dir.join("Cargo.lock").display()
    );

    println!("cargo:rerun-if-changed=src/wasm_target.rs");
    if let Err(why) = wasm_target::ensure_wasm_target(&mut |line| println!("cargo:warning={line}"))
    {
        panic!("{why}");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("sha256-wasm-target");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    if !status.success() {
        panic!(
            "building the page's SHA-256 module ({}) failed; it needs the {TARGET} target \
             (`rustup target add {TARGET}`, which rust-toolchain.toml asks for)",
            crate_dir.display()
        );
    }
    let module = target_dir
        .join(TARGET)
        .join("release/fsnode_sha256_wasm.wasm");
    std::fs::copy(&module, out_dir.join("sha256.wasm"))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", module.display()));
}
