//! Permission bits for a platform without POSIX modes: only "read-only" and "executable"
//! survive. A received file is `0o644` (`0o444` if the sender's owner could not write it),
//! plus `0o111` if the sender's owner could execute it; group and other bits, setuid, setgid
//! and sticky are not carried over. The node still applies its umask.

use fsnode_plugin::{FileMeta, NodeFacts, Policy};

pub struct PortableModes;

/// The portable mode of a sender's mode (`None`: a plain writable file).
pub fn portable(mode: Option<u32>) -> u32 {
    let mode = mode.unwrap_or(0o644);
    let base = if mode & 0o200 == 0 { 0o444 } else { 0o644 };
    if mode & 0o100 != 0 {
        base | 0o111
    } else {
        base
    }
}

impl Policy for PortableModes {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn map_mode(&self, _node: &NodeFacts, file: &FileMeta) -> Option<u32> {
        Some(portable(file.mode))
    }
}

fsnode_plugin::plugin!(PortableModes);

#[cfg(test)]
mod tests {
    use super::portable;

    #[test]
    fn keeps_only_read_only_and_executable() {
        assert_eq!(portable(Some(0o600)), 0o644);
        assert_eq!(portable(Some(0o4755)), 0o755);
        assert_eq!(portable(Some(0o500)), 0o555);
        assert_eq!(portable(Some(0o444)), 0o444);
        assert_eq!(portable(Some(0o777)), 0o755);
        assert_eq!(portable(None), 0o644);
    }
}
