// Shared by `node/build.rs` (the web page's SHA-256 module) and `policy::build` (plugins), which
// is why it uses nothing but std: a build script cannot use the crate it builds.

/// The target the web page's hashing module and the policy plugins are compiled for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Makes sure the compiler can build for [`WASM_TARGET`]. Where rustup manages the toolchain and
/// the target is missing (rustup installs a `rust-toolchain.toml`'s targets only together with
/// the toolchain itself, so a machine that already had this compiler may lack it), it adds the
/// target, telling `log` first in one line. Without rustup nothing is checked, and cargo's own
/// error says what is missing. `Err` says why the target could not be added and what to run.
pub fn ensure_wasm_target(log: &mut dyn FnMut(&str)) -> Result<(), String> {
    let Ok(installed) = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if !installed.status.success()
        || String::from_utf8_lossy(&installed.stdout)
            .lines()
            .any(|line| line.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    log(&format!(
        "installing the Rust target {WASM_TARGET} (rustup target add {WASM_TARGET})"
    ));
    let failed = |why: String| {
        format!(
            "the Rust target {WASM_TARGET} is not installed and `rustup target add {WASM_TARGET}` \
             failed: {why}; install it with `rustup target add {WASM_TARGET}` and build again"
        )
    };
    let added = std::process::Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !added.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&added.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}
