//! `fsnode id`: who this node is and where its page is. With a node running, what that node
//! announces (its `--name`, its port, its page on each served address, with a QR code for a
//! phone's camera); without one, what the identity file and the configuration say, and that
//! the node is not running.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use serde::Serialize;

use crate::cli::{IdArgs, RunArgs};
use crate::commands::client;
use crate::config::{Config, DEFAULT_PORT};
use crate::control::{NodeStatus, Reply, Request};
use crate::core::{DeviceId, DeviceType};
use crate::identity::Identity;
use crate::shell::runtime::{Clock, SystemClock};

/// What `fsnode id --json` prints.
#[derive(Debug, Serialize)]
struct IdView {
    device_id: DeviceId,
    name: String,
    device_type: DeviceType,
    /// Whether a node answered on the control socket (the other fields are then its own).
    running: bool,
    /// The running node's signaling port; without one, the port it would try first.
    port: u16,
    /// The running node's page on each served address (empty when not running).
    urls: Vec<String>,
    identity_file: std::path::PathBuf,
}

pub fn id(home: Option<&std::path::Path>, args: &IdArgs) -> anyhow::Result<()> {
    let config = Config::resolve(home, &RunArgs::default())?;
    let (identity, _) = Identity::load_or_create(&config.dirs.identity(), SystemClock.wall())?;
    let socket = config.dirs.control_socket();
    // A node starting or stopping at this moment may accept and not answer: not running, as
    // far as `id` can tell.
    let running = match client::request(&socket, Request::Status) {
        Ok(Reply::Status(status)) => Some(status),
        _ => None,
    };
    let view = match &running {
        Some(NodeStatus {
            device_id,
            name,
            device_type,
            signaling_port,
            urls,
            ..
        }) => IdView {
            device_id: device_id.clone(),
            name: name.clone(),
            device_type: *device_type,
            running: true,
            port: *signaling_port,
            urls: urls.clone(),
            identity_file: identity.path.clone(),
        },
        None => IdView {
            device_id: identity.device_id.clone(),
            name: config.name.clone(),
            device_type: config.device_type,
            running: false,
            port: config.port,
            urls: Vec::new(),
            identity_file: identity.path.clone(),
        },
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string(&view).context("encoding the reply")?;
        return writeln!(out, "{json}").context("writing to stdout");
    }
    let terminal = std::io::stdout().is_terminal();
    let qr = (args.qr || terminal).then_some(terminal);
    print(&mut out, &view, &socket, qr).context("writing to stdout")
}

fn print(
    out: &mut impl Write,
    view: &IdView,
    socket: &std::path::Path,
    qr: Option<bool>,
) -> std::io::Result<()> {
    writeln!(out, "device id: {}", view.device_id)?;
    writeln!(out, "name:      {}", view.name)?;
    writeln!(out, "type:      {}", view.device_type)?;
    if !view.running {
        let port = match view.port {
            0 => "a free one".to_owned(),
            DEFAULT_PORT => format!("{DEFAULT_PORT} (or a free one if taken)"),
            port => port.to_string(),
        };
        writeln!(out, "port:      {port} when it runs")?;
        return writeln!(
            out,
            "not running (nothing answers on {}): `fsnode run` starts it; the page's URL shows here then",
            socket.display()
        );
    }
    writeln!(out, "port:      {}", view.port)?;
    match view.urls.as_slice() {
        [] => writeln!(out, "page:      no served address found")?,
        urls => {
            for (i, url) in urls.iter().enumerate() {
                let label = if i == 0 { "page:" } else { "" };
                writeln!(out, "{label:<10} {url}")?;
            }
        }
    }
    if let Some(ansi) = qr {
        for url in &view.urls {
            writeln!(out)?;
            writeln!(out, "{url}")?;
            match qr_code(url, ansi) {
                Some(code) => write!(out, "{code}")?,
                None => writeln!(out, "(too long for a QR code)")?,
            }
        }
    }
    Ok(())
}

/// `url` as a QR code of Unicode half blocks (two modules per character cell) with the
/// quiet zone the standard asks for. On a terminal (`ansi`) it is drawn black on white
/// whatever the terminal's colours, so a phone's camera reads it off a dark screen too;
/// otherwise dark modules are the blocks.
pub fn qr_code(url: &str, ansi: bool) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(url, qrcode::EcLevel::M).ok()?;
    let image = code
        .render::<qrcode::render::unicode::Dense1x2>()
        .quiet_zone(true)
        .build();
    let mut text = String::new();
    for line in image.lines() {
        if ansi {
            // Black foreground on a white background, reset at the end of each line.
            text.push_str("\x1b[30;107m");
            text.push_str(line);
            text.push_str("\x1b[0m\n");
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_becomes_a_qr_code_of_half_blocks() {
        let code = qr_code("http://10.77.0.2:7452/", false).unwrap();
        let lines: Vec<&str> = code.lines().collect();
        // Version 2 (25 modules) plus a 4-module quiet zone each side, two rows per line.
        assert_eq!(lines.len(), 17, "{code}");
        assert!(lines.iter().all(|l| l.chars().count() == 33), "{code}");
        assert!(code.contains('▀') || code.contains('▄'));
    }
}
