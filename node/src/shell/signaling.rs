//! The TCP signaling adapter (spec section 3.1): listens on the node's signaling port, exchanges
//! `hello`s, dials other nodes, and hands what it learns to the core. Framing and decoding are
//! the core's (`core::signal`); this module only moves bytes and enforces time and count limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use smol::Timer;
use smol::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::core::node::{Input, Token};
use crate::core::signal::{Hello, LineFramer, Message};

/// A connection whose `hello` has not arrived by then is closed (spec 3.1).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which nothing arrived for this long is closed (spec 3.1).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Dialling gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent inbound connections; more are closed at once.
pub const MAX_INBOUND: usize = 64;

/// Binds the signaling port on each address (all on the same port; `port` 0 picks one).
pub async fn bind(addresses: &[IpAddr], port: u16) -> anyhow::Result<(Vec<TcpListener>, u16)> {
    let mut listeners = Vec::new();
    let mut port = port;
    for ip in addresses {
        let addr = SocketAddr::new(*ip, port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the signaling port on {addr}"))?;
        port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    if listeners.is_empty() {
        bail!("no address to listen on for signaling");
    }
    Ok((listeners, port))
}

/// Accepts connections until the listener fails; each is served on its own task.
pub async fn accept(listener: TcpListener, me: Hello, inputs: async_channel::Sender<Input>) {
    let inbound = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!("signaling accept failed: {err}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if inbound.fetch_add(1, Ordering::AcqRel) >= MAX_INBOUND {
            inbound.fetch_sub(1, Ordering::AcqRel);
            debug!(%from, "too many signaling connections; closing");
            continue;
        }
        let (me, inputs, inbound) = (me.clone(), inputs.clone(), inbound.clone());
        smol::spawn(async move {
            if let Err(err) = serve_inbound(stream, from, me, inputs).await {
                debug!(%from, "signaling connection closed: {err:#}");
            }
            inbound.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }
}

async fn serve_inbound(
    mut stream: TcpStream,
    from: SocketAddr,
    me: Hello,
    inputs: async_channel::Sender<Input>,
) -> anyhow::Result<()> {
    let mut conn = Connection::default();
    let hello = match conn.next(&mut stream, HELLO_TIMEOUT).await? {
        Message::Hello(hello) => hello,
        Message::HelloWrongVersion => {
            stream.write_all(&Message::Hello(me).encode()).await?;
            stream
                .write_all(
                    &Message::Bye {
                        reason: "version".into(),
                    }
                    .encode(),
                )
                .await?;
            bail!("peer speaks another protocol version");
        }
        other => bail!("first message is not hello: {other:?}"),
    };
    stream.write_all(&Message::Hello(me).encode()).await?;
    inputs
        .send(Input::Hello {
            from,
            hello,
            token: None,
        })
        .await?;
    loop {
        // Negotiation messages are routed by the connection layer added with WebRTC; until
        // then they are read (so the peer is not blocked) and dropped.
        let message = conn.next(&mut stream, IDLE_TIMEOUT).await?;
        debug!(%from, ?message, "signaling message");
    }
}

/// Dials `addr`, exchanges `hello`s, and reports the peer (or the failure, when the operator
/// asked for the dial).
pub async fn dial(
    addr: SocketAddr,
    me: Hello,
    token: Option<Token>,
    inputs: async_channel::Sender<Input>,
) {
    let result = async {
        let mut stream = with_timeout(CONNECT_TIMEOUT, async {
            TcpStream::connect(addr).await.map_err(anyhow::Error::from)
        })
        .await
        .with_context(|| format!("connecting to {addr}"))?;
        stream.write_all(&Message::Hello(me).encode()).await?;
        let mut conn = Connection::default();
        match conn.next(&mut stream, HELLO_TIMEOUT).await? {
            Message::Hello(hello) => Ok(hello),
            Message::HelloWrongVersion => bail!("{addr} speaks another protocol version"),
            other => bail!("{addr} answered {other:?} instead of hello"),
        }
    }
    .await;
    let input = match (result, token) {
        (Ok(hello), token) => Input::Hello {
            from: addr,
            hello,
            token,
        },
        (Err(err), Some(token)) => Input::DialFailed {
            token,
            error: format!("{err:#}"),
        },
        (Err(err), None) => {
            debug!(%addr, "probe failed: {err:#}");
            return;
        }
    };
    let _ = inputs.send(input).await;
}

/// One connection's read side: bytes in, decoded messages out.
#[derive(Default)]
struct Connection {
    framer: LineFramer,
    lines: std::collections::VecDeque<Vec<u8>>,
}

impl Connection {
    /// The next message, waiting at most `timeout` for bytes. Errors close the connection.
    async fn next(&mut self, stream: &mut TcpStream, timeout: Duration) -> anyhow::Result<Message> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Message::decode(&line)?);
            }
            let mut buf = [0u8; 16 * 1024];
            let n = with_timeout(timeout, async {
                stream.read(&mut buf).await.map_err(anyhow::Error::from)
            })
            .await?;
            if n == 0 {
                bail!("connection closed by the peer");
            }
            self.lines.extend(self.framer.push(&buf[..n])?);
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    futures_lite::future::or(fut, async {
        Timer::after(timeout).await;
        bail!("timed out after {timeout:?}")
    })
    .await
}
