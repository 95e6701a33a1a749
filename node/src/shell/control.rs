//! The control socket adapter: a Unix socket (mode 0600) in the runtime directory. Each line
//! is a versioned JSON request (`control.rs`); each gets one JSON reply line. Malformed or
//! oversized requests get an error reply; the socket stays up.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::shell::runtime::net::{UnixListener, UnixStream};
use anyhow::{Context, bail};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::control::{self, ErrorKind, MAX_REQUEST_BYTES, Reply, Request};
use crate::core::signal::LineFramer;
use crate::record::JournalEntry;
use crate::shell::runtime;
use crate::shell::watchers::{self, WatchRequest};
use fsnode_journal::Journal;

/// A client that sends nothing for this long is disconnected (watchers excepted).
pub const CLIENT_IDLE: Duration = Duration::from_secs(60);
/// Replies queued for one watcher or follower. A watcher that does not keep up is caught up
/// from the journal (`shell/watchers.rs`); a follower that does not is disconnected.
pub const WATCH_QUEUE: usize = 1024;

/// What a client's connection asks of the node loop.
pub enum ControlRequest {
    /// A parsed request and where its reply goes (for `send --wait`, its stream of replies).
    Ask {
        request: Request,
        reply: async_channel::Sender<Reply>,
    },
    /// A `watch` connection (re)registering for the node's events.
    Watch(WatchRequest),
}

/// Binds the socket. A leftover socket file from a crashed node is replaced; a live node
/// answering on it is an error (two nodes must not share a home).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(crate::exit::AlreadyRunning {
                socket: path.to_path_buf(),
            }
            .into());
        }
        fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to this user", path.display()))?;
    Ok(listener)
}

/// Serves the control socket; `journal` is read to catch up watchers that fell behind.
pub async fn serve(
    listener: UnixListener,
    requests: async_channel::Sender<ControlRequest>,
    journal: Journal<JournalEntry>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!("control accept failed: {err}");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        let journal = journal.clone();
        runtime::spawn(async move {
            if let Err(err) = serve_client(stream, requests, &journal).await {
                debug!("control client: {err:#}");
            }
        })
        .detach();
    }
}

async fn serve_client(
    mut stream: UnixStream,
    requests: async_channel::Sender<ControlRequest>,
    journal: &Journal<JournalEntry>,
) -> anyhow::Result<()> {
    let mut framer = LineFramer::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = runtime::timeout(CLIENT_IDLE, async {
            stream.read(&mut buf).await.map_err(anyhow::Error::from)
        })
        .await?;
        if n == 0 {
            return Ok(());
        }
        let lines = match framer.push(&buf[..n]) {
            Ok(lines) => lines,
            Err(_) => {
                let reply = Reply::error(
                    ErrorKind::BadRequest,
                    format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                );
                stream.write_all(&control::encode_reply(reply)).await?;
                bail!("oversized request");
            }
        };
        for line in lines {
            let reply = match control::parse_request(&line) {
                Err(error) => Reply::Error(error),
                Ok(Request::Watch) => {
                    // A stream of every journaled event until the client or the node goes.
                    return watchers::stream(&mut stream, &requests, journal).await;
                }
                Ok(request @ Request::Send { wait: true, .. }) => {
                    // A stream: what the send queued, then every change of its transfers.
                    let (tx, rx) = async_channel::bounded(WATCH_QUEUE);
                    requests
                        .send(ControlRequest::Ask { request, reply: tx })
                        .await
                        .context("the node is stopping")?;
                    while let Ok(reply) = rx.recv().await {
                        stream.write_all(&control::encode_reply(reply)).await?;
                    }
                    return Ok(());
                }
                Ok(request) => {
                    let (tx, rx) = async_channel::bounded(1);
                    requests
                        .send(ControlRequest::Ask { request, reply: tx })
                        .await
                        .context("the node is stopping")?;
                    rx.recv().await.unwrap_or_else(|_| {
                        Reply::error(ErrorKind::Internal, "the node stopped before answering")
                    })
                }
            };
            stream.write_all(&control::encode_reply(reply)).await?;
        }
    }
}
