//! The control-socket client used by every command that talks to a running node.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::config::resolve_dirs;
use crate::control::{self, ControlError, Reply, ReplyEnvelope, Request};

/// How long a command waits for the node's answer (a direct dial takes up to ~15 s).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// No node answered on the control socket (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error(
    "no fsnode is running for this home (nothing answers on {socket}); start one with `fsnode run`, or pass the --home it runs with"
)]
pub struct NoNode {
    pub socket: PathBuf,
}

/// Sends one request and returns the node's reply (an error reply is returned, not raised).
pub fn request(socket: &Path, request: Request) -> anyhow::Result<Reply> {
    let mut stream = UnixStream::connect(socket).map_err(|_| NoNode {
        socket: socket.to_path_buf(),
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream
        .write_all(&control::encode_request(request))
        .context("sending the request to the node")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the node's reply")?;
    if line.is_empty() {
        bail!("the node closed the control connection without answering");
    }
    let envelope: ReplyEnvelope = serde_json::from_str(&line)
        .with_context(|| format!("the node's reply is not understood: {}", line.trim()))?;
    Ok(envelope.reply)
}

/// Opens a stream request (`watch`, `follow`) to the node of `home`; its replies are the lines
/// that follow on the returned connection, until the node goes.
pub fn stream(home: Option<&Path>, request: Request) -> anyhow::Result<UnixStream> {
    let socket = resolve_dirs(home)?.control_socket();
    let mut stream = UnixStream::connect(&socket).map_err(|_| NoNode { socket })?;
    stream
        .write_all(&control::encode_request(request))
        .context("sending the request to the node")?;
    Ok(stream)
}

/// Sends one request to the node of `home` and returns its reply; an error reply becomes an
/// error whose message lists the candidates of an ambiguous id prefix.
pub fn ask(home: Option<&Path>, question: Request) -> anyhow::Result<Reply> {
    let socket = resolve_dirs(home)?.control_socket();
    let reply = request(&socket, question)?;
    if let Reply::Error(error) = &reply {
        return Err(refusal(error));
    }
    Ok(reply)
}

pub fn refusal(error: &ControlError) -> anyhow::Error {
    let mut message = error.message.clone();
    for candidate in &error.candidates {
        message.push_str(&format!("\n  {}  {}", candidate.id, candidate.name));
    }
    anyhow!(message)
}
