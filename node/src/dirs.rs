//! Where a node keeps things: config, data (identity, journal), runtime (control socket), the
//! receive directory, and a cache (build directories of `fsnode plugins build`).
//!
//! Precedence, most specific first: a per-directory flag, then `--home DIR` / `FSNODE_HOME`
//! (one root for everything, so several nodes share a machine and tests never touch the real
//! user's folders), then the platform's directories from the `directories` crate.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
    pub runtime: PathBuf,
    pub receive: PathBuf,
    /// Disposable: deleting it loses nothing but time.
    pub cache: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DirsError {
    #[error("no home directory could be found for this user; pass --home DIR or set FSNODE_HOME")]
    NoHome,
}

impl Dirs {
    /// Everything under one root: `ROOT/config`, `ROOT/data`, `ROOT/run`, `ROOT/received`,
    /// `ROOT/cache`.
    pub fn under(root: &Path) -> Self {
        Self {
            config: root.join("config"),
            data: root.join("data"),
            runtime: root.join("run"),
            receive: root.join("received"),
            cache: root.join("cache"),
        }
    }

    /// The platform's directories for the current user.
    pub fn platform() -> Result<Self, DirsError> {
        let project = directories::ProjectDirs::from("", "", "fsnode").ok_or(DirsError::NoHome)?;
        let data = project.data_dir().to_path_buf();
        // Linux has XDG_RUNTIME_DIR for sockets; elsewhere (or without it) the data dir does.
        let runtime = project
            .runtime_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data.join("run"));
        let receive = directories::UserDirs::new()
            .and_then(|user| {
                user.download_dir()
                    .map(Path::to_path_buf)
                    .or_else(|| Some(user.home_dir().join("Downloads")))
            })
            .ok_or(DirsError::NoHome)?;
        Ok(Self {
            config: project.config_dir().to_path_buf(),
            data,
            runtime,
            receive,
            cache: project.cache_dir().to_path_buf(),
        })
    }

    pub fn journal(&self) -> PathBuf {
        self.data.join("journal")
    }

    pub fn identity(&self) -> PathBuf {
        self.data.join("identity.pem")
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("fsnode.toml")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.runtime.join("fsnode.sock")
    }

    /// The trusted-devices projection file.
    pub fn trust_file(&self) -> PathBuf {
        self.data.join("trusted-devices.toml")
    }

    pub fn plugins(&self) -> PathBuf {
        self.config.join("plugins")
    }

    /// Cargo's target directory for `fsnode plugins build` of the crate named `name`: kept
    /// between builds (incremental), never inside the plugin's source tree.
    pub fn plugin_build(&self, name: &str) -> PathBuf {
        self.cache.join("plugin-build").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_root_holds_every_directory() {
        let dirs = Dirs::under(Path::new("/srv/node-a"));
        for dir in [
            &dirs.config,
            &dirs.data,
            &dirs.runtime,
            &dirs.receive,
            &dirs.cache,
        ] {
            assert!(dir.starts_with("/srv/node-a"), "{dir:?}");
        }
        assert_eq!(dirs.journal(), Path::new("/srv/node-a/data/journal"));
        assert_eq!(
            dirs.control_socket(),
            Path::new("/srv/node-a/run/fsnode.sock")
        );
        assert_eq!(
            dirs.plugin_build("allowlist"),
            Path::new("/srv/node-a/cache/plugin-build/allowlist")
        );
    }
}
