//! Browsers on the signaling port (spec 3.5): a connection that starts with `GET ` is HTTP/1.1.
//! `GET /` (and the page's own assets) serves the node's page, embedded in the binary;
//! `GET /signal` upgrades to a WebSocket whose text messages are signaling messages, one per
//! message. The WebSocket is bridged onto a socket pair whose other end runs the very same
//! connection code as a TCP signaling connection (`signaling::serve_bridged`), so `hello`
//! first, 256 KiB per message, idle time, fingerprint checks and authorization are one code
//! path. Nothing else is served.
//!
//! Limits, each the HTTP/WebSocket counterpart of a TCP one (README "Limits"):
//! - the request head: at most [`MAX_REQUEST_HEAD`] bytes (else `431`), complete within
//!   `HELLO_TIMEOUT` of the connection (else `408`): a slowloris client gains nothing;
//! - a `/signal` upgrade from another origin gets `403` (see [`origin_allowed`]): a page on
//!   another host must not open the node's signaling socket from a visitor's browser;
//! - one request per connection (`Connection: close`); methods other than `GET` get `405`,
//!   other paths `404`;
//! - WebSocket messages (and frames) of at most `MAX_LINE_BYTES` (256 KiB; larger closes with
//!   1009), text only (binary closes with 1003), the first one within `HELLO_TIMEOUT` of the
//!   connection, then the 120 s idle time of the line protocol;
//! - concurrent connections are those of the signaling listener (the same accept loop).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use tracing::debug;

use crate::core::signal::{LineFramer, MAX_LINE_BYTES};
use crate::shell::runtime::{self, Clock, SystemClock, net::TcpStream, net::UnixStream};
use crate::shell::signaling::{self, Duplex, HELLO_TIMEOUT, IDLE_TIMEOUT, Reporter};

/// The largest HTTP request head read (request line and headers); larger gets `431`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Headers parsed in a request head; more gets `431`.
pub const MAX_HEADERS: usize = 32;
/// How long a response may take to write before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After an error response, how long and how much of the client's rest is read and dropped.
pub const LINGER_TIME: Duration = Duration::from_secs(1);
pub const LINGER_BYTES: usize = 64 * 1024;

/// The WebSocket path.
pub const SIGNAL_PATH: &str = "/signal";

/// One file of the page.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The page and its assets, embedded at build time (node/web/).
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/cbor.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/cbor.js"),
    },
    Asset {
        path: "/trust.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/trust.js"),
    },
    Asset {
        path: "/sha256.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/sha256.js"),
    },
    Asset {
        path: "/view.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/view.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/favicon.svg"),
    },
    Asset {
        path: "/sha256.wasm",
        content_type: "application/wasm",
        body: include_bytes!(concat!(env!("OUT_DIR"), "/sha256.wasm")),
    },
];

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Asset(&'static Asset),
    /// A WebSocket upgrade of `/signal`, with the client's `Sec-WebSocket-Key`.
    Upgrade {
        key: Vec<u8>,
    },
    /// An error answered with this status and the connection closed.
    Refuse(Status),
}

impl PartialEq for Asset {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}
impl Eq for Asset {}
impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset").field("path", &self.path).finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    NotFound,
    /// A cross-origin WebSocket upgrade (see [`origin_allowed`]).
    Forbidden,
    MethodNotAllowed,
    Timeout,
    UpgradeRequired,
    HeadersTooLarge,
}

impl Status {
    pub fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::Timeout => "408 Request Timeout",
            Status::UpgradeRequired => "426 Upgrade Required",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large",
        }
    }
}

fn now() -> Instant {
    SystemClock.now()
}

/// Where the request head ends in `buf` (after `\r\n\r\n`), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Decides what a complete request head asks for (pure; the unit tests drive it).
pub fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Route::Refuse(Status::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Route::Refuse(Status::HeadersTooLarge),
        Err(_) => return Route::Refuse(Status::BadRequest),
    }
    if request.method != Some("GET") {
        return Route::Refuse(Status::MethodNotAllowed);
    }
    let Some(target) = request.path else {
        return Route::Refuse(Status::BadRequest);
    };
    // The query is irrelevant to what is served (the page may add one to defeat caches).
    let path = target.split('?').next().unwrap_or(target);
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if path == SIGNAL_PATH {
        if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
            return Route::Refuse(Status::UpgradeRequired);
        }
        if header("sec-websocket-version") != Some(b"13".as_slice()) {
            return Route::Refuse(Status::UpgradeRequired);
        }
        if !origin_allowed(header("origin"), header("host")) {
            return Route::Refuse(Status::Forbidden);
        }
        return match header("sec-websocket-key") {
            Some(key) if !key.is_empty() && key.len() <= 64 => Route::Upgrade { key: key.to_vec() },
            _ => Route::Refuse(Status::BadRequest),
        };
    }
    let path = if path == "/index.html" { "/" } else { path };
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => Route::Asset(asset),
        None => Route::Refuse(Status::NotFound),
    }
}

/// Whether a WebSocket upgrade's `Origin` may open the signaling socket. Browsers send the
/// origin of the page that asks; only the node's own page (served from the very `Host` the
/// request names) may, so a page on another host cannot make a visitor's browser talk to the
/// node. Clients that send no `Origin` are not browsers (nothing a web page can make), and
/// are allowed as on the TCP port. `Origin: null` (sandboxed frames, `file:` pages) and any
/// origin that is not `http(s)://` + the request's `Host` are refused.
pub fn origin_allowed(origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return false;
    };
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The response to an asset request, head and body.
pub fn asset_response(asset: &Asset) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
         Content-Security-Policy: default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
         connect-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; \
         frame-ancestors 'none'\r\nConnection: close\r\n\r\n",
        asset.content_type,
        asset.body.len()
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(asset.body);
    response
}

/// The response to a refused request.
pub fn error_response(status: Status) -> Vec<u8> {
    let body = format!("{}\n", status.line());
    let extra = if status == Status::UpgradeRequired {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n{body}",
        status.line(),
        body.len()
    )
    .into_bytes()
}

/// The `101` that completes a WebSocket upgrade.
pub fn upgrade_response(key: &[u8]) -> Vec<u8> {
    let accept = async_tungstenite::tungstenite::handshake::derive_accept_key(key);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// The WebSocket limits: messages and frames no larger than a signaling line.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_LINE_BYTES))
        .max_frame_size(Some(MAX_LINE_BYTES))
}

/// Reads the request head within the `hello` deadline: `(head, bytes read after it)`, or the
/// status to answer.
async fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>), Status> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(Status::HeadersTooLarge);
        }
        let left = deadline.saturating_duration_since(now());
        let want = chunk.len().min(MAX_REQUEST_HEAD + 4 - buf.len());
        let read = runtime::timeout(left, async {
            stream
                .read(&mut chunk[..want])
                .await
                .map_err(anyhow::Error::from)
        })
        .await;
        match read {
            Ok(0) => return Err(Status::BadRequest),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(Status::Timeout),
        }
        if buf.len() > MAX_REQUEST_HEAD && head_end(&buf).is_none_or(|end| end > MAX_REQUEST_HEAD) {
            return Err(Status::HeadersTooLarge);
        }
    }
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    runtime::timeout(WRITE_TIMEOUT, async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    })
    .await
}

/// Closes after an error response without resetting it away: what the client still sends
/// (the rest of an oversized head) is read and dropped for a moment first, since closing a
/// socket with unread data makes the kernel answer with a reset that can discard the response.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = runtime::timeout(LINGER_TIME, async {
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok(())
    })
    .await;
    stream.shutdown_both();
}

/// Serves one HTTP connection accepted on the signaling port (its first byte was `G`).
pub async fn serve(
    mut stream: TcpStream,
    from: SocketAddr,
    reporter: &Reporter,
) -> anyhow::Result<()> {
    let deadline = now() + HELLO_TIMEOUT;
    let route = match read_head(&mut stream, deadline).await {
        Ok((head, rest)) => (route(&head), rest),
        Err(status) => (Route::Refuse(status), Vec::new()),
    };
    match route {
        (Route::Asset(asset), _) => {
            write_all(&mut stream, &asset_response(asset)).await?;
            linger(&mut stream).await;
            Ok(())
        }
        (Route::Refuse(status), _) => {
            let _ = write_all(&mut stream, &error_response(status)).await;
            linger(&mut stream).await;
            bail!("HTTP request refused: {}", status.line())
        }
        (Route::Upgrade { key }, rest) => {
            write_all(&mut stream, &upgrade_response(&key)).await?;
            let ws = WebSocketStream::from_partially_read(
                stream,
                rest,
                Role::Server,
                Some(websocket_config()),
            )
            .await;
            bridge(ws, from, reporter, deadline).await
        }
    }
}

/// One WebSocket text message as one signaling line. JSON may hold a newline only as
/// whitespace between tokens, which would split the line: such a message is re-encoded
/// compactly, and one that is not valid JSON is a framing error.
pub fn message_line(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut line = if text.contains(['\n', '\r']) {
        let value: serde_json::Value =
            serde_json::from_str(text).context("a signaling message is not valid JSON")?;
        serde_json::to_vec(&value)?
    } else {
        text.as_bytes().to_vec()
    };
    line.push(b'\n');
    Ok(line)
}

/// Why the WebSocket side of a bridge ended.
enum Ended {
    /// The browser closed (or the node's side did).
    Closed,
    /// A limit or rule was broken: close with this code.
    Broken(CloseCode, String),
}

/// Moves messages between the WebSocket and the line-protocol connection on a socket pair.
async fn bridge(
    ws: WebSocketStream<TcpStream>,
    from: SocketAddr,
    reporter: &Reporter,
    hello_deadline: Instant,
) -> anyhow::Result<()> {
    let (node_end, bridge_end) = UnixStream::pair().context("creating a socket pair")?;
    let connection = {
        let reporter = reporter.clone();
        runtime::spawn(async move { signaling::serve_bridged(node_end, from, &reporter).await })
    };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let mut to_node = bridge_end.clone();
    let inbound = async {
        let mut first = true;
        loop {
            let wait = if first {
                hello_deadline.saturating_duration_since(now())
            } else {
                IDLE_TIMEOUT
            };
            let next = runtime::timeout(wait, async { Ok(ws_rx.next().await) }).await;
            let message = match next {
                Err(_) if first => {
                    return Ended::Broken(CloseCode::Policy, "no hello in time".into());
                }
                Err(_) => return Ended::Broken(CloseCode::Policy, "idle".into()),
                Ok(None) => return Ended::Closed,
                Ok(Some(Err(WsError::Capacity(err)))) => {
                    return Ended::Broken(CloseCode::Size, err.to_string());
                }
                Ok(Some(Err(err))) => {
                    return Ended::Broken(CloseCode::Protocol, err.to_string());
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                WsMessage::Text(text) => {
                    first = false;
                    let line = match message_line(text.as_str()) {
                        Ok(line) => line,
                        Err(err) => return Ended::Broken(CloseCode::Invalid, format!("{err:#}")),
                    };
                    if to_node.write_all(&line).await.is_err() {
                        return Ended::Closed;
                    }
                }
                WsMessage::Binary(_) => {
                    return Ended::Broken(
                        CloseCode::Unsupported,
                        "binary messages are not signaling".into(),
                    );
                }
                WsMessage::Close(_) => return Ended::Closed,
                // tungstenite answers pings itself.
                _ => {}
            }
        }
    };
    let mut from_node = bridge_end.clone();
    let outbound = async {
        let mut framer = LineFramer::default();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from_node.read(&mut buf).await {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => n,
            };
            // The node's own lines: never over the limit, but bounded all the same.
            let Ok(lines) = framer.push(&buf[..n]) else {
                return Ended::Broken(CloseCode::Error, "oversized line from the node".into());
            };
            for line in lines {
                let Ok(text) = String::from_utf8(line) else {
                    continue;
                };
                let sent = runtime::timeout(WRITE_TIMEOUT, async {
                    ws_tx
                        .send(WsMessage::text(text))
                        .await
                        .map_err(anyhow::Error::from)
                })
                .await;
                if sent.is_err() {
                    return Ended::Closed;
                }
            }
        }
    };
    let ended = futures_lite::future::or(inbound, outbound).await;
    bridge_end.shutdown_both();
    let (code, reason) = match &ended {
        Ended::Closed => (CloseCode::Normal, String::new()),
        Ended::Broken(code, reason) => (*code, reason.clone()),
    };
    let frame = CloseFrame {
        code,
        reason: reason.chars().take(100).collect::<String>().into(),
    };
    let _ = runtime::timeout(Duration::from_secs(2), async {
        ws_tx.close(Some(frame)).await.map_err(anyhow::Error::from)
    })
    .await;
    let result = runtime::timeout(Duration::from_secs(2), connection).await;
    debug!(%from, "WebSocket signaling ended");
    match ended {
        Ended::Broken(_, reason) => bail!("WebSocket closed: {reason}"),
        Ended::Closed => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::node::Input;
    use crate::core::signal::Hello;
    use crate::core::{DeviceId, DeviceType};
    use crate::shell::runtime::net::TcpListener;
    use crate::shell::signaling::ConnEvent;
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn head(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    #[test]
    fn requests_are_routed_to_the_page_the_websocket_or_refused() {
        let page = route(&head("GET / HTTP/1.1\nHost: n\n\n"));
        assert!(matches!(page, Route::Asset(a) if a.path == "/"));
        let with_query = route(&head("GET /app.js?v=1 HTTP/1.1\nHost: n\n\n"));
        assert!(matches!(with_query, Route::Asset(a) if a.path == "/app.js"));
        assert_eq!(
            route(&head("GET /etc/passwd HTTP/1.1\nHost: n\n\n")),
            Route::Refuse(Status::NotFound)
        );
        assert_eq!(
            route(&head("GET /../Cargo.toml HTTP/1.1\n\n")),
            Route::Refuse(Status::NotFound)
        );
        assert_eq!(
            route(&head("POST / HTTP/1.1\nContent-Length: 0\n\n")),
            Route::Refuse(Status::MethodNotAllowed)
        );
        assert_eq!(
            route(&head("GET /signal HTTP/1.1\nHost: n\n\n")),
            Route::Refuse(Status::UpgradeRequired)
        );
        assert_eq!(
            route(b"GET\x00 / HTTP/1.1\r\n\r\n"),
            Route::Refuse(Status::BadRequest)
        );
        let upgrade = route(&head(
            "GET /signal HTTP/1.1\nHost: n\nUpgrade: websocket\nConnection: keep-alive, Upgrade\n\
             Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n",
        ));
        assert_eq!(
            upgrade,
            Route::Upgrade {
                key: b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()
            }
        );
        // RFC 6455's own example key and answer.
        let response = String::from_utf8(upgrade_response(b"dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\n"))
            .collect();
        assert_eq!(
            route(&head(&format!("GET / HTTP/1.1\n{many}\n"))),
            Route::Refuse(Status::HeadersTooLarge)
        );
    }

    #[test]
    fn only_the_nodes_own_page_or_a_non_browser_may_open_the_signaling_socket() {
        let upgrade = |extra: &str| {
            route(&head(&format!(
                "GET /signal HTTP/1.1\n{extra}Upgrade: websocket\nConnection: Upgrade\n\
                 Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
            )))
        };
        let accepted = Route::Upgrade {
            key: b"dGhlIHNhbXBsZSBub25jZQ==".to_vec(),
        };
        // Same origin: the page the node served from this host and port (any letter case).
        assert_eq!(
            upgrade("Host: 10.77.0.1:4780\nOrigin: http://10.77.0.1:4780\n"),
            accepted
        );
        assert_eq!(
            upgrade("Host: Depot.local:4780\nOrigin: http://depot.LOCAL:4780\n"),
            accepted
        );
        assert_eq!(
            upgrade("Host: depot.example\nOrigin: https://depot.example\n"),
            accepted
        );
        // No Origin: not a browser (fsnode's own clients, scripts), as on the TCP port.
        assert_eq!(upgrade("Host: 10.77.0.1:4780\n"), accepted);
        assert_eq!(upgrade(""), accepted);
        // Cross-origin: another host, another port, another scheme, `null`, or an Origin
        // without a Host to compare it with: 403, and no WebSocket.
        for refused in [
            "Host: 10.77.0.1:4780\nOrigin: http://evil.example\n",
            "Host: 10.77.0.1:4780\nOrigin: http://10.77.0.1:8080\n",
            "Host: 10.77.0.1:4780\nOrigin: http://10.77.0.1\n",
            "Host: 10.77.0.1:4780\nOrigin: http://10.77.0.1:4780.evil.example\n",
            "Host: 10.77.0.1:4780\nOrigin: ftp://10.77.0.1:4780\n",
            "Host: 10.77.0.1:4780\nOrigin: null\n",
            "Host: 10.77.0.1:4780\nOrigin: \n",
            "Origin: http://10.77.0.1:4780\n",
        ] {
            assert_eq!(
                upgrade(refused),
                Route::Refuse(Status::Forbidden),
                "{refused}"
            );
        }
        let response = String::from_utf8(error_response(Status::Forbidden)).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 403 Forbidden\r\n"),
            "{response}"
        );
        // The check is for the WebSocket only: any page may link to or load the page itself.
        assert!(matches!(
            route(&head("GET / HTTP/1.1\nHost: n\nOrigin: http://other\n\n")),
            Route::Asset(a) if a.path == "/"
        ));
    }

    #[test]
    fn a_message_with_newlines_becomes_one_line_or_a_framing_error() {
        assert_eq!(
            message_line("{\"type\":\"bye\"}").unwrap(),
            b"{\"type\":\"bye\"}\n"
        );
        let pretty = message_line("{\n  \"type\": \"bye\",\r\n  \"reason\": \"x\"\n}").unwrap();
        assert_eq!(pretty.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(
            Message::decode(&pretty[..pretty.len() - 1]).unwrap(),
            Message::Bye { reason: "x".into() }
        );
        assert!(message_line("{\"type\":\n").is_err());
    }

    use crate::core::signal::Message;

    /// A node's signaling listener on loopback with the channels its node loop would read.
    struct Listener {
        addr: SocketAddr,
        inputs: async_channel::Receiver<Input>,
        conns: async_channel::Receiver<ConnEvent>,
        _task: runtime::Task<()>,
    }

    fn node_id() -> DeviceId {
        DeviceId::from_sha256(&[7; 32])
    }

    async fn listener() -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (inputs_tx, inputs) = async_channel::unbounded();
        let (conns_tx, conns) = async_channel::unbounded();
        let me = Hello {
            id: node_id(),
            name: "node".into(),
            device_type: DeviceType::Server,
            port: addr.port(),
        };
        let reporter = Reporter::new(me, inputs_tx, conns_tx);
        let budgets = crate::core::admission::ConnectionBudgets::new(
            crate::core::admission::Limits::default(),
        );
        let task = runtime::spawn(signaling::accept(
            listener,
            reporter,
            std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            std::sync::Arc::new(std::sync::Mutex::new(budgets)),
        ));
        Listener {
            addr,
            inputs,
            conns,
            _task: task,
        }
    }

    /// Sends `request` and reads the whole answer until the node closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        runtime::timeout(Duration::from_secs(15), async {
            stream.read_to_end(&mut answer).await?;
            Ok(())
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn websocket(addr: SocketAddr) -> WebSocketStream<TcpStream> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (ws, response) = async_tungstenite::client_async(format!("ws://{addr}/signal"), stream)
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        ws
    }

    /// What the client sees after it sent `messages`: the node's text messages, then how
    /// the connection closed.
    async fn ws_outcome(ws: &mut WebSocketStream<TcpStream>) -> (Vec<String>, Option<CloseCode>) {
        let mut texts = Vec::new();
        let closed = runtime::timeout(Duration::from_secs(15), async {
            while let Some(message) = ws.next().await {
                match message {
                    Ok(WsMessage::Text(text)) => texts.push(text.to_string()),
                    Ok(WsMessage::Close(frame)) => return Ok(frame.map(|f| f.code)),
                    Ok(_) => {}
                    Err(_) => return Ok(None),
                }
            }
            Ok(None)
        })
        .await
        .unwrap();
        (texts, closed)
    }

    #[test]
    fn the_page_is_served_and_everything_else_refused() {
        runtime::block_on(async {
            let node = listener().await;
            let page = exchange(node.addr, b"GET / HTTP/1.1\r\nHost: n\r\n\r\n").await;
            assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
            assert!(page.contains("Content-Type: text/html"), "{page}");
            assert!(page.contains("<script type=\"module\" src=\"/app.js\">"));
            let wasm = exchange(node.addr, b"GET /sha256.wasm HTTP/1.1\r\n\r\n").await;
            assert!(wasm.contains("application/wasm") && wasm.contains("\0asm"));
            // The icon the page names in its <link rel="icon">.
            assert!(page.contains("<link rel=\"icon\" href=\"/favicon.svg\""));
            let icon = exchange(node.addr, b"GET /favicon.svg HTTP/1.1\r\n\r\n").await;
            assert!(icon.starts_with("HTTP/1.1 200 OK\r\n"), "{icon}");
            assert!(icon.contains("Content-Type: image/svg+xml") && icon.contains("<svg"));
            let missing = exchange(node.addr, b"GET /secret HTTP/1.1\r\n\r\n").await;
            assert!(
                missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{missing}"
            );
            // Only `GET ` is HTTP (spec 3.5): anything else is the line protocol, and a line
            // that is not JSON closes the connection without an answer.
            let put = exchange(node.addr, b"PUT / HTTP/1.1\r\n\r\n").await;
            assert_eq!(put, "");
            let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
            while huge.len() < MAX_REQUEST_HEAD + 100 {
                huge.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            let too_large = exchange(node.addr, &huge).await;
            assert!(too_large.starts_with("HTTP/1.1 431"), "{too_large}");
            // A cross-origin upgrade is answered 403 on the wire and reaches nothing.
            let cross = exchange(
                node.addr,
                b"GET /signal HTTP/1.1\r\nHost: n\r\nOrigin: http://evil.example\r\n\
                  Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .await;
            assert!(cross.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{cross}");
            // Line-delimited JSON still works on the same port.
            assert!(node.inputs.is_empty());
        });
    }

    #[test]
    fn websocket_signaling_follows_the_line_rules() {
        runtime::block_on(async {
            let node = listener().await;
            let browser = DeviceId::from_sha256(&[3; 32]);
            let hello = Message::Hello(Hello {
                id: browser.clone(),
                name: "phone".into(),
                device_type: DeviceType::Mobile,
                port: 0,
            });
            let hello_text = String::from_utf8(hello.encode())
                .unwrap()
                .trim_end()
                .to_owned();

            // A hello is answered with the node's own, as one message without a newline, and
            // reaches the node as a TCP line would, from the browser's address.
            let mut ws = websocket(node.addr).await;
            ws.send(WsMessage::text(hello_text.clone())).await.unwrap();
            let answer = runtime::timeout(Duration::from_secs(5), async {
                Ok(ws.next().await.unwrap().unwrap())
            })
            .await
            .unwrap();
            let WsMessage::Text(answer) = answer else {
                panic!("{answer:?}")
            };
            assert!(!answer.contains('\n'));
            assert!(
                matches!(Message::decode(answer.as_bytes()).unwrap(), Message::Hello(h) if h.id == node_id())
            );
            // The connection's writer is kept, as the node loop keeps it: dropping it closes
            // the connection gracefully.
            let _writer = match node.conns.recv().await.unwrap() {
                ConnEvent::Up {
                    from, hello, tx, ..
                } => {
                    assert_eq!(hello.id, browser);
                    assert_eq!(hello.port, 0);
                    assert_eq!(from.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
                    tx
                }
                _ => panic!("the connection's first event is not Up"),
            };
            // Messages after it reach the node too. (Not a `bye`: the connection closes
            // gracefully after one, spec 3.1.)
            let end =
                "{\"type\":\"candidate\",\"candidate\":\"\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}";
            ws.send(WsMessage::text(end)).await.unwrap();
            match node.inputs.recv().await.unwrap() {
                Input::Signal { message, .. } => {
                    assert_eq!(
                        message,
                        Message::Candidate(crate::core::signal::Candidate {
                            candidate: String::new(),
                            sdp_mid: Some("0".into()),
                            sdp_mline_index: Some(0),
                        })
                    )
                }
                other => panic!("{other:?}"),
            }
            // Over 256 KiB: closed with 1009 (message too big).
            let huge = format!(
                "{{\"type\":\"x\",\"pad\":\"{}\"}}",
                "a".repeat(MAX_LINE_BYTES)
            );
            let _ = ws.send(WsMessage::text(huge)).await;
            let (_, closed) = ws_outcome(&mut ws).await;
            assert_eq!(closed, Some(CloseCode::Size));

            // Anything but hello first: closed, and the node hears nothing.
            let mut ws = websocket(node.addr).await;
            ws.send(WsMessage::text(
                "{\"type\":\"offer\",\"sdp\":\"v=0\",\"seq\":1}",
            ))
            .await
            .unwrap();
            let (texts, closed) = ws_outcome(&mut ws).await;
            assert!(texts.is_empty(), "{texts:?}");
            assert_eq!(closed, Some(CloseCode::Normal));
            // Invalid JSON: closed the same way.
            let mut ws = websocket(node.addr).await;
            ws.send(WsMessage::text("{not json")).await.unwrap();
            let (texts, _) = ws_outcome(&mut ws).await;
            assert!(texts.is_empty());
            // Binary messages are not signaling: closed with 1003.
            let mut ws = websocket(node.addr).await;
            ws.send(WsMessage::binary(hello_text.into_bytes()))
                .await
                .unwrap();
            let (_, closed) = ws_outcome(&mut ws).await;
            assert_eq!(closed, Some(CloseCode::Unsupported));
            assert!(node.inputs.is_empty(), "no input from refused connections");
        });
    }

    /// Slow clients get nothing for their patience: a request head still incomplete
    /// `HELLO_TIMEOUT` after connecting gets `408`, and a WebSocket without a `hello` by then
    /// is closed (both run at once, so the test takes the 10 s once).
    #[test]
    fn slow_clients_are_closed_at_the_hello_deadline() {
        runtime::block_on(async {
            let node = listener().await;
            let started = SystemClock.now();
            let slowloris = async {
                let mut stream = TcpStream::connect(node.addr).await.unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: n\r\n")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                // A header line now and then does not extend the deadline.
                for _ in 0..3 {
                    runtime::sleep(Duration::from_secs(2)).await;
                    let _ = stream.write_all(b"X-Slow: 1\r\n").await;
                }
                runtime::timeout(Duration::from_secs(15), async {
                    stream.read_to_end(&mut answer).await?;
                    Ok(())
                })
                .await
                .unwrap();
                (
                    String::from_utf8_lossy(&answer).into_owned(),
                    SystemClock.now(),
                )
            };
            let silent = async {
                let mut ws = websocket(node.addr).await;
                let outcome = ws_outcome(&mut ws).await;
                (outcome, SystemClock.now())
            };
            let ((answer, answered_at), ((texts, closed), closed_at)) =
                futures_lite::future::zip(slowloris, silent).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(texts.is_empty());
            assert_eq!(closed, Some(CloseCode::Policy));
            for at in [answered_at, closed_at] {
                let waited = at - started;
                assert!(
                    waited >= HELLO_TIMEOUT - Duration::from_millis(200)
                        && waited < HELLO_TIMEOUT + Duration::from_secs(3),
                    "{waited:?}"
                );
            }
            assert!(node.inputs.is_empty());
        });
    }
}

/// The page's own codecs (CBOR, SHA-256 from the embedded module, device ids, verification
/// codes) under Node's test runner, against Node's `crypto` and this crate's
/// `verification_code`.
#[cfg(test)]
mod page_tests {
    use crate::core::DeviceId;
    use crate::core::trust::verification_code;

    #[test]
    fn page_scripts_pass_their_unit_tests() {
        let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let vector = verification_code(
            &DeviceId::from_sha256(&[0; 32]),
            &DeviceId::from_sha256(&[1; 32]),
        );
        let output = std::process::Command::new("node")
            .arg("--test")
            .arg(web.join("tests/page.test.mjs"))
            .env(
                "FSNODE_SHA256_WASM",
                concat!(env!("OUT_DIR"), "/sha256.wasm"),
            )
            .env("FSNODE_CODE_VECTOR", vector)
            .output()
            .expect("running node (Debian package nodejs; test.sh installs it)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("# pass 8"), "{stdout}");
    }
}
