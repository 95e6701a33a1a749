//! `fsnode plugins list|check|build`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::{PluginsArgs, PluginsCommand, RunArgs};
use crate::commands::client::NoNode;
use crate::config::Config;
use crate::control::{PluginRow, Reply, Request};
use crate::core::TransferId;
use crate::policy::samples::Samples;
use crate::policy::{self, Call, PluginError, Runtime};
use crate::shell::runtime::Stopwatch;

pub fn plugins(home: Option<&Path>, args: &PluginsArgs) -> anyhow::Result<()> {
    match &args.command {
        PluginsCommand::List { json } => list(home, *json),
        PluginsCommand::Reload { json } => reload(home, *json),
        PluginsCommand::Check { file, config } => check(home, file, config.as_deref()),
        PluginsCommand::Build { dir, out } => build(home, dir, out.as_deref()),
    }
}

fn reload(home: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let Reply::Plugins { plugins } = super::client::ask(home, Request::PluginsReload)? else {
        bail!("unexpected reply from the node");
    };
    print_rows(plugins, json)
}

fn list(home: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let rows = match super::client::ask(home, Request::Plugins) {
        Ok(Reply::Plugins { plugins }) => plugins,
        Ok(other) => bail!("unexpected reply from the node: {other:?}"),
        Err(err) if err.downcast_ref::<NoNode>().is_some() => {
            // No node: what one would load, in order, without loading anything.
            let config = Config::resolve(home, &RunArgs::default())?;
            let rows: Vec<PluginRow> = config
                .plugins
                .plugins()
                .into_iter()
                .enumerate()
                .map(|(i, (name, path))| PluginRow {
                    order: i + 1,
                    name,
                    path: path.display().to_string(),
                    version: None,
                    disabled: None,
                    calls: 0,
                    fuel: 0,
                })
                .collect();
            if !json {
                writeln!(
                    out,
                    "no node is running; the configured order ({}):",
                    config.plugins.dir.display()
                )?;
            }
            rows
        }
        Err(err) => return Err(err),
    };
    drop(out);
    print_rows(rows, json)
}

fn print_rows(rows: Vec<PluginRow>, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no plugins: the built-in policy decides everything")?;
    }
    for row in rows {
        let state = match (&row.disabled, &row.version) {
            (Some(reason), _) => format!("DISABLED: {reason}"),
            (None, Some(version)) => format!(
                "loaded, contract {version}, {} call(s), {} fuel",
                row.calls, row.fuel
            ),
            (None, None) => "not loaded".into(),
        };
        writeln!(
            out,
            "{:>2}. {:<20} {state}\n    {}",
            row.order, row.name, row.path
        )?;
    }
    Ok(())
}

fn check(home: Option<&Path>, file: &Path, config: Option<&str>) -> anyhow::Result<()> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .context("the plugin's file name is not valid UTF-8")?;
    let limits = Config::resolve(home, &RunArgs::default())
        .map(|c| c.plugins.limits)
        .unwrap_or_default();
    let config = match config {
        Some(text) => text.to_owned(),
        None => std::fs::read_to_string(file.with_extension("toml")).unwrap_or_default(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "limits: {} fuel per call, {} MiB memory, {:?} deadline",
        limits.fuel,
        limits.memory_bytes / (1024 * 1024),
        limits.deadline
    )?;
    let runtime = Runtime::new(limits)?;
    let clock = Stopwatch::start();
    let mut plugin = runtime.load(name, file, &config)?;
    writeln!(
        out,
        "loaded {name}: contract {} (compile, instantiate, configure: {:?})",
        plugin.version(),
        clock.elapsed()
    )?;
    let Samples {
        node,
        peer,
        file,
        queue,
        connected,
    } = Samples::new();
    // After a failure the instance is unusable (the node disables the plugin): stop there.
    let mut failed = false;
    let mut ask = |question: &str, call: &mut dyn FnMut() -> Result<Call<String>, PluginError>| {
        if failed {
            return writeln!(out, "{question:<14} not asked: disabled");
        }
        let clock = Stopwatch::start();
        let result = call();
        let took = clock.elapsed();
        match result {
            Ok(call) => writeln!(
                out,
                "{question:<14} {:<40} {:>9} fuel {took:>10.1?}",
                call.value, call.fuel
            ),
            Err(err) => {
                failed = true;
                writeln!(out, "{question:<14} FAILED: {err} (the node disables it)")
            }
        }
    };
    ask("on-discovered", &mut || {
        plugin
            .on_discovered(&node, &peer)
            .map(|c| label(c, |a| a.label().into()))
    })?;
    ask("on-offer", &mut || {
        plugin
            .on_offer(&node, &peer)
            .map(|c| label(c, |a| a.label().into()))
    })?;
    ask("on-transfer", &mut || {
        plugin
            .on_transfer(&node, &peer, &file)
            .map(|c| label(c, |a| a.label()))
    })?;
    ask("schedule", &mut || {
        plugin.schedule(&node, &queue, &connected).map(|c| {
            label(c, |order| {
                order
                    .iter()
                    .map(TransferId::short)
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
    })?;
    ask("map-mode", &mut || {
        plugin
            .map_mode(&node, &file)
            .map(|c| label(c, |m| format!("{m:o}")))
    })?;
    Ok(())
}

/// A call's answer as text ("no opinion" for `None`).
fn label<T>(call: Call<Option<T>>, f: impl FnOnce(&T) -> String) -> Call<String> {
    Call {
        value: call
            .value
            .as_ref()
            .map_or_else(|| "no opinion".to_owned(), f),
        fuel: call.fuel,
    }
}

fn build(home: Option<&Path>, dir: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::resolve(home, &RunArgs::default())?;
    let out = out.map_or_else(|| config.plugins.dir.clone(), Path::to_path_buf);
    policy::build::ensure_target(&mut std::io::stderr())?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|dir| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "plugin".to_owned());
    // Cargo's own setting wins (a developer's shared target directory); else the home's cache.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| config.dirs.plugin_build(&name), std::path::PathBuf::from);
    // Cargo's own progress (a bar on a terminal, a line per crate elsewhere) on stderr: a
    // first build takes the better part of a minute.
    eprintln!(
        "building {} for {} (cargo's progress follows)",
        dir.display(),
        policy::build::TARGET
    );
    let built = policy::build::build_showing_progress(&dir.join("Cargo.toml"), &target_dir, &out)?;
    let mut stdout = std::io::stdout().lock();
    for path in &built {
        writeln!(stdout, "built {}", path.display())?;
    }
    if out != config.plugins.dir {
        return Ok(());
    }
    // A running node loads it by itself within seconds; ask it now and say what it did.
    match super::client::ask(home, Request::PluginsReload) {
        Ok(Reply::Plugins { plugins }) => {
            let loaded = crate::core::policy::in_use(&plugins);
            writeln!(
                stdout,
                "the running node now asks: {}",
                if loaded.is_empty() {
                    "no plugin (the built-in policy decides)".to_owned()
                } else {
                    loaded.join(", ")
                }
            )?;
            for p in plugins.iter().filter(|p| p.disabled.is_some()) {
                let reason = p.disabled.as_deref().unwrap_or_default();
                writeln!(stdout, "  {} is disabled: {reason}", p.name)?;
            }
        }
        Err(err) if err.downcast_ref::<NoNode>().is_some() => {
            writeln!(stdout, "no node is running; `fsnode run` loads it at start")?;
        }
        Ok(_) | Err(_) => writeln!(
            stdout,
            "the running node loads it within seconds (`fsnode plugins list` shows it)"
        )?,
    }
    Ok(())
}
