//! The TCP signaling adapter (spec section 3.1): listens on the node's signaling port, dials
//! other nodes, exchanges `hello`s, and moves negotiation messages between the core and the
//! wire. Framing and decoding are the core's (`core::signal`); this module only moves bytes and
//! enforces time and count limits. Messages are routed by the device id of a connection's
//! `hello`, not by connection (spec 3.2).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shell::runtime::net::{TcpListener, TcpStream, UnixStream};
use anyhow::{Context, bail};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::core::DeviceId;
use crate::core::admission::ConnectionBudgets;
use crate::core::node::{ConnId, Input, Token};
use crate::core::signal::{Hello, LineFramer, Message};
use crate::shell::runtime::{self, Clock, SystemClock};

/// A connection whose `hello` has not arrived by then is closed (spec 3.1).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which nothing arrived for this long is closed (spec 3.1).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Dialling gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After the node stops writing on a connection it closes, it still reads this long.
pub const GRACEFUL_CLOSE: Duration = crate::core::router::GRACEFUL_CLOSE;
/// Concurrent inbound connections; more are closed at once.
pub const MAX_INBOUND: usize = 64;
/// Lines queued for one connection's writer; a peer that does not read loses messages.
pub const WRITE_QUEUE: usize = 256;

/// What connections tell the node loop besides core inputs.
pub enum ConnEvent {
    /// A connection finished its `hello` exchange with a node at `from`; lines for it go to
    /// `tx` (dropping `tx` closes the connection gracefully). `token` is set when the operator
    /// asked for the dial.
    Up {
        conn: ConnId,
        from: SocketAddr,
        hello: Hello,
        token: Option<Token>,
        tx: async_channel::Sender<Vec<u8>>,
    },
    /// The connection's reader ended: nothing more arrives on it.
    Down { conn: ConnId },
    /// A dial made to deliver messages to `peer` at `addr` failed; `error` says how, for
    /// people ([`dial_error`]).
    DialFailed {
        peer: DeviceId,
        addr: SocketAddr,
        error: String,
    },
}

/// Everything a connection task needs to report.
#[derive(Clone)]
pub struct Reporter {
    pub me: Hello,
    pub inputs: async_channel::Sender<Input>,
    pub conns: async_channel::Sender<ConnEvent>,
    next_conn: Arc<AtomicUsize>,
}

impl Reporter {
    pub fn new(
        me: Hello,
        inputs: async_channel::Sender<Input>,
        conns: async_channel::Sender<ConnEvent>,
    ) -> Self {
        Self {
            me,
            inputs,
            conns,
            next_conn: Arc::new(AtomicUsize::new(1)),
        }
    }

    fn conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) as ConnId
    }
}

/// Binds the signaling port on each address (all on the same port; `port` 0 picks one).
pub async fn bind(
    addresses: &[IpAddr],
    port: u16,
    is_default: bool,
) -> anyhow::Result<(Vec<TcpListener>, u16)> {
    match bind_all(addresses, port).await {
        Err(Bind::InUse { address, .. }) if is_default => {
            let (listeners, free) = bind_all(addresses, 0).await.map_err(Bind::into_error)?;
            warn!(
                "the default port {port} is in use on {address}; serving on port {free} instead (the page's URL and `peers add` use it; --port fixes one)"
            );
            Ok((listeners, free))
        }
        result => result.map_err(Bind::into_error),
    }
}

/// Why binding the signaling port failed.
enum Bind {
    /// Another socket holds `port` on `address`.
    InUse {
        port: u16,
        address: IpAddr,
    },
    Other(anyhow::Error),
}

impl Bind {
    fn into_error(self) -> anyhow::Error {
        match self {
            Bind::InUse { port, address } => {
                anyhow::Error::new(crate::exit::PortInUse { port, address })
            }
            Bind::Other(err) => err,
        }
    }
}

/// Binds `port` (0: a free one, then the same on every further address) on each address.
async fn bind_all(addresses: &[IpAddr], port: u16) -> Result<(Vec<TcpListener>, u16), Bind> {
    let mut listeners = Vec::new();
    let mut port = port;
    for ip in addresses {
        let addr = SocketAddr::new(*ip, port);
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
                return Err(Bind::InUse { port, address: *ip });
            }
            Err(err) => {
                let context = format!("binding the signaling port on {addr}");
                return Err(Bind::Other(anyhow::Error::new(err).context(context)));
            }
        };
        port = listener
            .local_addr()
            .map_err(|e| Bind::Other(e.into()))?
            .port();
        listeners.push(listener);
    }
    if listeners.is_empty() {
        return Err(Bind::Other(anyhow::anyhow!(
            "no address to listen on for signaling"
        )));
    }
    Ok((listeners, port))
}

/// Accepts connections until the listener fails; each is served on its own task. `inbound`
/// counts the node's inbound connections (shared by its listeners) and `budgets` is the
/// per-address budget of new ones (spec 3.1, 3.4): a connection over either is closed at once.
pub async fn accept(
    listener: TcpListener,
    reporter: Reporter,
    inbound: Arc<AtomicUsize>,
    budgets: Arc<Mutex<ConnectionBudgets>>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!("signaling accept failed: {err}");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = budgets
            .lock()
            .map(|mut b| b.admit(from.ip(), SystemClock.now()))
            .unwrap_or(false);
        if !admitted {
            // Yield between refusals: under a flood the backlog is never empty, and accept
            // would otherwise keep the executor thread from the control socket and the
            // connections already admitted.
            futures_lite::future::yield_now().await;
            continue;
        }
        if inbound.fetch_add(1, Ordering::AcqRel) >= MAX_INBOUND {
            inbound.fetch_sub(1, Ordering::AcqRel);
            debug!(%from, "too many signaling connections; closing");
            futures_lite::future::yield_now().await;
            continue;
        }
        let (reporter, inbound) = (reporter.clone(), inbound.clone());
        runtime::spawn(async move {
            // Browsers speak HTTP and WebSocket on the same port (spec 3.5): `GET ` first.
            let result = match first_byte(&stream).await {
                Ok(b'G') => crate::shell::web::serve(stream, from, &reporter).await,
                Ok(_) => serve(stream, from, Side::Accepted, &reporter).await,
                Err(err) => Err(err),
            };
            if let Err(err) = result {
                debug!(%from, "signaling connection closed: {err:#}");
            }
            inbound.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }
}

/// Dials `addr` and serves the connection. `expected` is the device the dial is meant to
/// reach (a different `hello` closes it); `token` is set when the operator asked for it.
pub async fn dial(
    addr: SocketAddr,
    expected: Option<DeviceId>,
    token: Option<Token>,
    reporter: Reporter,
) {
    let connected = runtime::timeout(CONNECT_TIMEOUT, async {
        TcpStream::connect(addr).await.map_err(anyhow::Error::from)
    })
    .await;
    let result = match connected {
        Ok(stream) => {
            let side = Side::Dialed {
                expected: expected.clone(),
                token,
            };
            serve(stream, addr, side, &reporter)
                .await
                .with_context(|| format!("signaling with {addr}"))
        }
        Err(err) => Err(anyhow::anyhow!(dial_error(addr, &err))),
    };
    let Err(err) = result else { return };
    debug!(%addr, "signaling dial: {err:#}");
    if let Some(token) = token {
        let _ = reporter
            .inputs
            .send(Input::DialFailed {
                token,
                error: format!("{err:#}"),
            })
            .await;
    }
    if let Some(peer) = expected {
        let _ = reporter
            .conns
            .send(ConnEvent::DialFailed {
                peer,
                addr,
                error: format!("{err:#}"),
            })
            .await;
    }
}

/// What a failed TCP connect to `addr` means, for people: nothing listening there is not
/// the same as a host that does not answer.
fn dial_error(addr: SocketAddr, err: &anyhow::Error) -> String {
    if err.downcast_ref::<runtime::TimedOut>().is_some() {
        return format!("no answer at {addr} within {}s", CONNECT_TIMEOUT.as_secs());
    }
    match err
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
    {
        Some(std::io::ErrorKind::ConnectionRefused) => {
            format!("nothing listens at {addr} (connection refused)")
        }
        Some(std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable) => {
            format!("no route to {addr}")
        }
        _ => format!("connecting to {addr}: {err:#}"),
    }
}

/// The first byte of an accepted connection, left unread, waiting at most the `hello` time.
async fn first_byte(stream: &TcpStream) -> anyhow::Result<u8> {
    let mut byte = [0u8; 1];
    let n = runtime::timeout(HELLO_TIMEOUT, async {
        stream.peek(&mut byte).await.map_err(anyhow::Error::from)
    })
    .await?;
    if n == 0 {
        bail!("connection closed before the first byte");
    }
    Ok(byte[0])
}

/// Serves an accepted connection that carries line-delimited JSON from a source other than a
/// TCP socket: the WebSocket bridge (`shell::web`) hands its end of a socket pair here, so
/// every rule of spec 3.1-3.4 runs the same code as for TCP.
pub async fn serve_bridged(
    stream: UnixStream,
    from: SocketAddr,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    serve(stream, from, Side::Accepted, reporter).await
}

/// A byte stream a signaling connection runs over: TCP, or one end of a socket pair.
pub trait Duplex: AsyncRead + AsyncWrite + Clone + Unpin + Send + 'static {
    /// Stops writing (the peer reads an end of stream) while reading goes on: a graceful close.
    fn shutdown_write(&self);
    /// Shuts both directions, which ends a reader blocked on the stream.
    fn shutdown_both(&self);
}

impl Duplex for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl Duplex for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn shutdown_both(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

enum Side {
    Accepted,
    Dialed {
        expected: Option<DeviceId>,
        token: Option<Token>,
    },
}

/// One connection: `hello` exchange, then messages in both directions until either side
/// closes, a limit is hit, or the node drops the connection's writer.
async fn serve<S: Duplex>(
    stream: S,
    from: SocketAddr,
    side: Side,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let mut reader = Reader::new(stream.clone());
    let mut writer = stream.clone();
    let hello_line = Message::Hello(reporter.me.clone()).encode();
    let (hello, token) = match side {
        Side::Accepted => {
            let hello = match reader.next(HELLO_TIMEOUT).await? {
                Message::Hello(hello) => hello,
                Message::HelloWrongVersion => {
                    writer.write_all(&hello_line).await?;
                    let bye = Message::Bye {
                        reason: "version".into(),
                    };
                    writer.write_all(&bye.encode()).await?;
                    bail!("the peer speaks another protocol version");
                }
                other => bail!("first message is not hello: {other:?}"),
            };
            writer.write_all(&hello_line).await?;
            (hello, None)
        }
        Side::Dialed { expected, token } => {
            writer.write_all(&hello_line).await?;
            let hello = match reader.next(HELLO_TIMEOUT).await? {
                Message::Hello(hello) => hello,
                Message::HelloWrongVersion => bail!("{from} speaks another protocol version"),
                other => bail!("{from} answered {other:?} instead of hello"),
            };
            if let Some(expected) = expected
                && expected != hello.id
            {
                bail!("{from} is {}, not the expected {expected}", hello.id);
            }
            (hello, token)
        }
    };
    let peer = hello.id.clone();
    let conn = reporter.conn_id();
    let (tx, rx) = async_channel::bounded::<Vec<u8>>(WRITE_QUEUE);
    // Sent before any message of the connection is forwarded: the node loop takes
    // connection events first, so the connection is known before what arrives on it.
    reporter
        .conns
        .send(ConnEvent::Up {
            conn,
            from,
            hello,
            token,
            tx,
        })
        .await?;
    // The writer ends when the node drops the sender (the connection is closed on purpose):
    // it writes what was queued, stops writing (half-close), and still lets the reader handle
    // what arrives until the peer closes too or GRACEFUL_CLOSE passes (spec 3.1).
    let write_half = stream.clone();
    let writer_task = runtime::spawn(async move {
        let mut write_half = write_half;
        while let Ok(line) = rx.recv().await {
            if write_half.write_all(&line).await.is_err() {
                break;
            }
        }
        let _ = write_half.flush().await;
        stream.shutdown_write();
        runtime::sleep(GRACEFUL_CLOSE).await;
        stream.shutdown_both();
    });
    let result = async {
        let mut timeout = IDLE_TIMEOUT;
        loop {
            let message = match reader.next(timeout).await {
                Ok(message) => message,
                Err(err) if err.is::<runtime::TimedOut>() && timeout == IDLE_TIMEOUT => {
                    // Idle: stop writing, and still handle what arrives for a moment.
                    debug!(%from, "signaling connection idle; closing");
                    reader.stream.shutdown_write();
                    timeout = GRACEFUL_CLOSE;
                    continue;
                }
                Err(err) => return Err(err),
            };
            reporter
                .inputs
                .send(Input::Signal {
                    conn,
                    peer: peer.clone(),
                    message,
                })
                .await?;
        }
    }
    .await;
    let _ = reporter.conns.send(ConnEvent::Down { conn }).await;
    writer_task.cancel().await;
    result
}

/// A connection's read side: bytes in, decoded messages out.
struct Reader<S> {
    stream: S,
    framer: LineFramer,
    lines: std::collections::VecDeque<Vec<u8>>,
    buf: Box<[u8]>,
}

impl<S: Duplex> Reader<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            framer: LineFramer::default(),
            lines: Default::default(),
            buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// The next message, waiting at most `timeout` for bytes. Errors close the connection.
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Message::decode(&line)?);
            }
            let (stream, buf) = (&mut self.stream, &mut self.buf);
            let n = runtime::timeout(timeout, async {
                stream.read(buf).await.map_err(anyhow::Error::from)
            })
            .await?;
            if n == 0 {
                bail!("connection closed by the peer");
            }
            self.lines.extend(self.framer.push(&self.buf[..n])?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DeviceType;

    fn hello(n: u8, port: u16) -> Hello {
        Hello {
            id: DeviceId::from_sha256(&[n; 32]),
            name: format!("node{n}"),
            device_type: DeviceType::Desktop,
            port,
        }
    }

    async fn read_some(stream: &mut TcpStream) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        let n = runtime::timeout(Duration::from_secs(5), async {
            stream.read(&mut buf).await.map_err(anyhow::Error::from)
        })
        .await
        .unwrap();
        buf.truncate(n);
        buf
    }

    /// Spec 3.1: closing is graceful. When the node drops a connection's writer, it stops
    /// writing (the peer reads end of stream) but still handles what the peer sends until the
    /// peer closes too.
    #[test]
    fn a_closed_connection_stops_writing_and_still_reads_until_the_peer_closes() {
        runtime::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (inputs_tx, inputs) = async_channel::unbounded();
            let (conns_tx, conns) = async_channel::unbounded();
            let reporter = Reporter::new(hello(1, 4001), inputs_tx, conns_tx);
            let peer = DeviceId::from_sha256(&[2; 32]);
            let dialing = runtime::spawn(dial(addr, Some(peer.clone()), None, reporter));
            let (mut remote, _) = listener.accept().await.unwrap();
            let first = read_some(&mut remote).await;
            assert!(matches!(
                Message::decode(&first[..first.len() - 1]),
                Ok(Message::Hello(_))
            ));
            remote
                .write_all(&Message::Hello(hello(2, 4002)).encode())
                .await
                .unwrap();
            let Ok(ConnEvent::Up { conn, tx, .. }) = conns.recv().await else {
                panic!("the connection comes up");
            };
            // The node closes it: writing stops, so the peer reads the end of the stream.
            drop(tx);
            assert!(read_some(&mut remote).await.is_empty(), "end of stream");
            // What the peer still sends is handled.
            let bye = Message::Bye {
                reason: "shutdown".into(),
            };
            remote.write_all(&bye.encode()).await.unwrap();
            let input = runtime::timeout(Duration::from_secs(5), async {
                inputs.recv().await.map_err(anyhow::Error::from)
            })
            .await
            .unwrap();
            assert!(
                matches!(&input, Input::Signal { conn: c, message, .. } if *c == conn && *message == bye),
                "{input:?}"
            );
            // The peer closes too: the connection is down.
            drop(remote);
            let down = runtime::timeout(Duration::from_secs(5), async {
                conns.recv().await.map_err(anyhow::Error::from)
            })
            .await
            .unwrap();
            assert!(matches!(down, ConnEvent::Down { conn: c } if c == conn));
            dialing.await;
        });
    }

    /// A peer that does not close after the node stopped writing is cut off
    /// [`GRACEFUL_CLOSE`] later.
    #[test]
    fn a_peer_that_never_closes_is_cut_off_after_the_graceful_close() {
        runtime::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (inputs_tx, _inputs) = async_channel::unbounded();
            let (conns_tx, conns) = async_channel::unbounded();
            let reporter = Reporter::new(hello(1, 4001), inputs_tx, conns_tx);
            let dialing = runtime::spawn(dial(addr, None, None, reporter));
            let (mut remote, _) = listener.accept().await.unwrap();
            read_some(&mut remote).await;
            remote
                .write_all(&Message::Hello(hello(2, 4002)).encode())
                .await
                .unwrap();
            let Ok(ConnEvent::Up { tx, .. }) = conns.recv().await else {
                panic!("the connection comes up");
            };
            let closed_at = SystemClock.now();
            drop(tx);
            let down = runtime::timeout(GRACEFUL_CLOSE * 3, async {
                conns.recv().await.map_err(anyhow::Error::from)
            })
            .await
            .unwrap();
            assert!(matches!(down, ConnEvent::Down { .. }));
            let took = closed_at.elapsed();
            assert!(
                took >= GRACEFUL_CLOSE - Duration::from_millis(100),
                "{took:?}"
            );
            dialing.await;
            drop(remote);
        });
    }
}
