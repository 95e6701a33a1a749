use std::io::Write;

use anyhow::Context;

use crate::cli::{IdArgs, RunArgs};
use crate::config::Config;
use crate::identity::Identity;
use crate::shell::runtime::{Clock, SystemClock};

/// `fsnode id`: the device id, name and type this node announces.
pub fn id(home: Option<&std::path::Path>, args: &IdArgs) -> anyhow::Result<()> {
    let config = Config::resolve(home, &RunArgs::default())?;
    let (identity, _) = Identity::load_or_create(&config.dirs.identity(), SystemClock.wall())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "device_id": identity.device_id,
            "name": config.name,
            "device_type": config.device_type,
            "identity_file": identity.path,
        });
        writeln!(out, "{json}")
    } else {
        writeln!(out, "device id: {}", identity.device_id)
            .and_then(|()| writeln!(out, "name:      {}", config.name))
            .and_then(|()| writeln!(out, "type:      {}", config.device_type))
    }
    .context("writing to stdout")
}
