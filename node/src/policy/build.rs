//! Building Rust plugins without tools beyond the pinned toolchain: `cargo build` for
//! `wasm32-unknown-unknown` (no WASI), then the core module is turned into a component with
//! `wit-component` (the contract's types travel in the custom section `wit-bindgen` embeds).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Why a plugin could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    #[error("cargo build of {manifest} failed:\n{stderr}")]
    Cargo { manifest: PathBuf, stderr: String },
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a component of {module}: {message}")]
    Encode { module: PathBuf, message: String },
    #[error("cargo built no wasm module from {0}")]
    Nothing(PathBuf),
    #[error("{0}")]
    NoTarget(String),
}

/// The target plugins are compiled for.
pub const TARGET: &str = crate::wasm_target::WASM_TARGET;

/// Makes sure the compiler can build for [`TARGET`], adding it through rustup where it is
/// missing and saying so on `log` in one line (`wasm_target::ensure_wasm_target`).
pub fn ensure_target(log: &mut dyn std::io::Write) -> Result<(), BuildError> {
    crate::wasm_target::ensure_wasm_target(&mut |line| {
        let _ = writeln!(log, "{line}");
    })
    .map_err(BuildError::NoTarget)
}

/// Turns a core wasm module built with the guest crate into a component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| format!("{e:#}"))
}

/// Builds the cdylib crates of the package or workspace at `manifest` (release, for
/// [`TARGET`]) with `target_dir` as cargo's target directory, and writes each as a component
/// to `out_dir/NAME.wasm` (the crate name, dashes kept). Returns the components' paths.
pub fn build(
    manifest: &Path,
    target_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    build_with(manifest, target_dir, out_dir, false)
}

/// [`build`], with cargo's progress and messages on this process's stderr (the CLI): a
/// failure's messages are there, not in the error.
pub fn build_showing_progress(
    manifest: &Path,
    target_dir: &Path,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    build_with(manifest, target_dir, out_dir, true)
}

fn build_with(
    manifest: &Path,
    target_dir: &Path,
    out_dir: &Path,
    progress: bool,
) -> Result<Vec<PathBuf>, BuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let stderr = if progress {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::piped()
    };
    let output = Command::new(cargo)
        .stderr(stderr)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .map_err(BuildError::Spawn)?;
    if !output.status.success() {
        let stderr = if progress {
            "(cargo's messages are above)".to_owned()
        } else {
            String::from_utf8_lossy(&output.stderr).into_owned()
        };
        return Err(BuildError::Cargo {
            manifest: manifest.to_path_buf(),
            stderr,
        });
    }
    std::fs::create_dir_all(out_dir).map_err(|source| BuildError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut built = Vec::new();
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact"
            || !message["target"]["crate_types"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        {
            continue;
        }
        let Some(name) = message["target"]["name"].as_str() else {
            continue;
        };
        let modules = message["filenames"].as_array().into_iter().flatten();
        for module in modules
            .filter_map(|f| f.as_str())
            .filter(|f| f.ends_with(".wasm"))
        {
            let module = PathBuf::from(module);
            let bytes = std::fs::read(&module).map_err(|source| BuildError::Io {
                path: module.clone(),
                source,
            })?;
            let component = componentize(&bytes).map_err(|message| BuildError::Encode {
                module: module.clone(),
                message,
            })?;
            let path = out_dir.join(format!("{}.wasm", name.replace('_', "-")));
            // Written aside and renamed: a node or test never loads half a component.
            let partial = path.with_extension("wasm.partial");
            std::fs::write(&partial, component)
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|source| BuildError::Io {
                    path: path.clone(),
                    source,
                })?;
            built.push(path);
        }
    }
    if built.is_empty() {
        return Err(BuildError::Nothing(manifest.to_path_buf()));
    }
    Ok(built)
}

/// This repository's `plugins/` workspace (the shipped plugins and the test fixtures), built
/// once per process into `target/plugins/`; for the repository's own tests and benchmarks.
/// Returns the directory holding the components (`NAME.wasm`).
pub fn repository_plugins() -> Result<&'static Path, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let target = root.join("target").join("plugins");
            let out = target.join("components");
            ensure_target(&mut std::io::stderr()).map_err(|e| e.to_string())?;
            build(&root.join("plugins/Cargo.toml"), &target, &out)
                .map(|_| out)
                .map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(Clone::clone)
}
