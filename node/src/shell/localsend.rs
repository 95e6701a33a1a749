//! LocalSend's IO (PROTOCOL.md section 7): the HTTPS server on the LocalSend port of each served
//! address, the HTTPS client (pinned to the fingerprint the core names), the TLS probe of a
//! claimed fingerprint, and the multicast socket. Thin: requests become
//! `core::localsend::Input`s, the core's `Effect`s are carried out here; nothing is decided.
//!
//! HTTP is hyper's HTTP/1.1 over rustls (ring) on smol, through smol-hyper's IO adapter.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_lite::AsyncReadExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Body as _, Frame, Incoming};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use smol_hyper::rt::{FuturesIo, SmolTimer};
use tracing::{debug, warn};

use crate::core::TransferId;
use crate::core::admission::{ConnectionBudgets, Limits};
use crate::core::localsend::{self as ls, Effect, Request, RequestId, wire};
use crate::core::node::Input;
use crate::shell::runtime::{self, Clock, net::TcpListener, net::TcpStream};

/// Inbound LocalSend connections held at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The TLS handshake and the request head must be complete within this long.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The request head (line and headers), at most (hyper's smallest read buffer).
pub const MAX_HEAD_BYTES: usize = 8192;
/// Headers per request, at most.
pub const MAX_HEADERS: usize = 32;
/// An upload whose next body piece does not come within this long is dropped.
pub const BODY_IDLE: Duration = Duration::from_secs(30);
/// Connecting to a LocalSend device (TCP and TLS), at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer to `prepare-upload` (the app shows its user a dialogue first), at most.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// An answer to the other calls, at most.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An upload's answer after its last byte, and the time between two pieces, at most.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// The LocalSend certificate: its own key in `DATA/localsend.pem`, not the node's identity
/// (see PROTOCOL.md 7.1 for why). Returns the rustls pieces and the certificate's SHA-256.
pub fn certificate(
    path: &Path,
) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>, [u8; 32])> {
    crate::identity::Identity::load_or_create(path, runtime::SystemClock.wall())
        .with_context(|| format!("the LocalSend certificate {}", path.display()))?;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // The certificate file is written by the identity code, which labels its PKCS#8 key
    // `PRIVATE_KEY`; rustls reads the standard `PRIVATE KEY` label.
    let pem = pem.replace("PRIVATE_KEY-----", "PRIVATE KEY-----");
    let pem = pem.as_bytes();
    let cert = CertificateDer::pem_slice_iter(pem)
        .next()
        .context("the LocalSend certificate file holds no certificate")?
        .context("the LocalSend certificate file is damaged")?;
    let key = PrivateKeyDer::from_pem_slice(pem)
        .context("the LocalSend certificate file holds no usable private key")?;
    let fingerprint = Sha256::digest(cert.as_ref()).into();
    Ok((cert, key, fingerprint))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the server's tasks share.
struct Server {
    inputs: async_channel::Sender<Input>,
    /// Requests waiting for the core, by id.
    open: Mutex<HashMap<RequestId, async_channel::Sender<Answer>>>,
    next: AtomicU64,
    inbound: AtomicUsize,
    budgets: Mutex<ConnectionBudgets>,
}

enum Answer {
    Proceed,
    Reply(u16, Vec<u8>),
}

/// The adapter the node loop owns.
pub struct LocalSendAdapter {
    server: Arc<Server>,
    uploads: HashMap<TransferId, runtime::Task<()>>,
    multicast: Option<Arc<smol::Async<std::net::UdpSocket>>>,
    /// The served IPv4 addresses multicast goes out of.
    multicast_from: Vec<Ipv4Addr>,
    port: u16,
}

impl LocalSendAdapter {
    /// Binds the HTTPS port on each of `addresses` and the multicast group on the IPv4 ones,
    /// and starts serving. Inputs go to `inputs`.
    pub async fn start(
        addresses: &[IpAddr],
        port: u16,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        inputs: async_channel::Sender<Input>,
    ) -> anyhow::Result<Self> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .context("the LocalSend certificate")?;
        let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
        let server = Arc::new(Server {
            inputs: inputs.clone(),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            inbound: AtomicUsize::new(0),
            budgets: Mutex::new(ConnectionBudgets::new(Limits::default())),
        });
        for ip in addresses {
            let addr = SocketAddr::new(*ip, port);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the LocalSend port on {addr}"))?;
            runtime::spawn(accept(listener, acceptor.clone(), server.clone())).detach();
        }
        let multicast_from: Vec<Ipv4Addr> = addresses
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let multicast = match multicast_socket(port, &multicast_from) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                runtime::spawn(receive_datagrams(socket.clone(), inputs)).detach();
                Some(socket)
            }
            Err(err) => {
                warn!(
                    "LocalSend multicast discovery is off ({err:#}); devices can still register over HTTPS"
                );
                None
            }
        };
        Ok(Self {
            server,
            uploads: HashMap::new(),
            multicast,
            multicast_from,
            port,
        })
    }

    /// Carries out one of the core's LocalSend effects.
    pub fn act(&mut self, effect: Effect) {
        match effect {
            Effect::Reply { req, status, body } => {
                let open = self
                    .server
                    .open
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&req);
                if let Some(tx) = open {
                    let _ = tx.try_send(Answer::Reply(status, body));
                }
            }
            Effect::Proceed { req } => {
                let open = self
                    .server
                    .open
                    .lock()
                    .expect("not poisoned")
                    .get(&req)
                    .cloned();
                if let Some(tx) = open {
                    let _ = tx.try_send(Answer::Proceed);
                }
            }
            Effect::Probe { ip, port, claimed } => {
                let inputs = self.server.inputs.clone();
                runtime::spawn(async move {
                    let presented = probe(SocketAddr::new(ip, port), claimed).await;
                    let input = ls::Input::Probed {
                        ip,
                        port,
                        claimed,
                        presented,
                    };
                    let _ = inputs.send(Input::LocalSend(input)).await;
                })
                .detach();
            }
            Effect::Call {
                call,
                to,
                fingerprint,
                path,
                body,
            } => {
                let inputs = self.server.inputs.clone();
                let wait = if path == ls::PATH_PREPARE {
                    PREPARE_TIMEOUT
                } else {
                    CALL_TIMEOUT
                };
                runtime::spawn(async move {
                    let body = Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed();
                    let result = post(to, fingerprint, &path, body, "application/json", wait)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let input = ls::Input::Answered { call, result };
                    let _ = inputs.send(Input::LocalSend(input)).await;
                })
                .detach();
            }
            Effect::Upload {
                id,
                to,
                fingerprint,
                path,
                file,
                size,
            } => {
                let inputs = self.server.inputs.clone();
                let task = runtime::spawn(async move {
                    let result = upload(to, fingerprint, &path, &file, size)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let input = ls::Input::Uploaded { id, result };
                    let _ = inputs.send(Input::LocalSend(input)).await;
                });
                self.uploads.retain(|_, task| !task.is_finished());
                self.uploads.insert(id, task);
            }
            Effect::StopUpload { id } => {
                // Dropping the task stops it (and closes its connection).
                self.uploads.remove(&id);
            }
            Effect::Multicast { body } => {
                let Some(socket) = &self.multicast else {
                    return;
                };
                let group = SocketAddr::V4(SocketAddrV4::new(ls::MULTICAST_GROUP, self.port));
                for from in &self.multicast_from {
                    let sent = rustix::net::sockopt::set_ip_multicast_if(socket.get_ref(), from)
                        .map_err(std::io::Error::from)
                        .and_then(|()| socket.get_ref().send_to(&body, group));
                    if let Err(err) = sent {
                        debug!(%from, "LocalSend announcement not sent: {err}");
                    }
                }
            }
        }
    }
}

/// A UDP socket bound to the group and port, member of the group on each served address only.
fn multicast_socket(
    port: u16,
    interfaces: &[Ipv4Addr],
) -> anyhow::Result<smol::Async<std::net::UdpSocket>> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    anyhow::ensure!(!interfaces.is_empty(), "no IPv4 address is served");
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &SocketAddrV4::new(ls::MULTICAST_GROUP, port))
        .context("binding the LocalSend multicast port")?;
    for interface in interfaces {
        sockopt::set_ip_add_membership(&fd, &ls::MULTICAST_GROUP, interface)
            .with_context(|| format!("joining the LocalSend group on {interface}"))?;
    }
    sockopt::set_ip_multicast_ttl(&fd, 1)?;
    let socket = std::net::UdpSocket::from(fd);
    Ok(smol::Async::new(socket)?)
}

async fn receive_datagrams(
    socket: Arc<smol::Async<std::net::UdpSocket>>,
    inputs: async_channel::Sender<Input>,
) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(err) => {
                debug!("LocalSend multicast receive failed: {err}");
                runtime::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let data = buffer[..len].to_vec();
        if inputs
            .send(Input::LocalSend(ls::Input::Datagram { from, data }))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn accept(listener: TcpListener, acceptor: futures_rustls::TlsAcceptor, server: Arc<Server>) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!("LocalSend accept failed: {err}");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = server
            .budgets
            .lock()
            .expect("not poisoned")
            .admit(from.ip(), runtime::SystemClock.now());
        if !admitted || server.inbound.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropped: closed before a byte is read
        }
        server.inbound.fetch_add(1, Ordering::Relaxed);
        let (acceptor, server) = (acceptor.clone(), server.clone());
        runtime::spawn(async move {
            serve_connection(stream, from, acceptor, &server).await;
            server.inbound.fetch_sub(1, Ordering::Relaxed);
        })
        .detach();
    }
}

async fn serve_connection(
    stream: TcpStream,
    from: SocketAddr,
    acceptor: futures_rustls::TlsAcceptor,
    server: &Arc<Server>,
) {
    let tls =
        match runtime::timeout(HEAD_TIMEOUT, async { Ok(acceptor.accept(stream).await?) }).await {
            Ok(tls) => tls,
            Err(err) => {
                debug!(%from, "LocalSend TLS handshake failed: {err:#}");
                return;
            }
        };
    let service_server = server.clone();
    let service = hyper::service::service_fn(move |request| {
        let server = service_server.clone();
        async move { Ok::<_, Infallible>(handle(request, from, server).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    if let Err(err) = builder.serve_connection(FuturesIo::new(tls), service).await {
        debug!(%from, "LocalSend connection ended: {err}");
    }
}

type Reply = hyper::Response<Full<Bytes>>;

fn reply(status: u16, body: Vec<u8>) -> Reply {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if response.body().size_hint().exact().is_none_or(|n| n != 0) {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    response
}

/// The query's value for `key` (percent-decoded), if any.
fn query(uri: &hyper::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let digit = |b: u8| char::from(b).to_digit(16);
                match (digit(bytes[i + 1]), digit(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a whole JSON body of at most `limit` bytes (`None`: longer, or the body broke).
async fn read_body(body: &mut Incoming, limit: usize) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let frame = runtime::timeout(BODY_IDLE, async { Ok(body.frame().await) })
            .await
            .ok()?;
        match frame {
            None => return Some(data),
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    if data.len() + chunk.len() > limit {
                        return None;
                    }
                    data.extend_from_slice(&chunk);
                }
            }
            Some(Err(_)) => return None,
        }
    }
}

/// Tells the core a request went away unanswered (its connection closed or timed out).
struct GoneGuard {
    req: RequestId,
    server: Arc<Server>,
    answered: bool,
}

impl Drop for GoneGuard {
    fn drop(&mut self) {
        self.server
            .open
            .lock()
            .expect("not poisoned")
            .remove(&self.req);
        if !self.answered {
            let inputs = self.server.inputs.clone();
            let req = self.req;
            runtime::spawn(async move {
                let _ = inputs.send(Input::LocalSend(ls::Input::Gone { req })).await;
            })
            .detach();
        }
    }
}

async fn handle(request: hyper::Request<Incoming>, from: SocketAddr, server: Arc<Server>) -> Reply {
    let (parts, mut body) = request.into_parts();
    let path = parts.uri.path();
    let method = &parts.method;
    let post = method == hyper::Method::POST;
    let routed = match path {
        ls::PATH_INFO if method == hyper::Method::GET => Request::Info,
        ls::PATH_REGISTER if post => match read_body(&mut body, wire::MAX_INFO_BYTES).await {
            Some(body) => Request::Register { body },
            None => return reply(413, ls::message("body too large")),
        },
        ls::PATH_PREPARE if post => match read_body(&mut body, wire::MAX_PREPARE_BYTES).await {
            Some(body) => Request::PrepareUpload {
                pin: query(&parts.uri, "pin"),
                body,
                nonce: rand::random(),
            },
            None => return reply(413, ls::message("body too large")),
        },
        ls::PATH_UPLOAD if post => {
            let (Some(session), Some(file), Some(token)) = (
                query(&parts.uri, "sessionId"),
                query(&parts.uri, "fileId"),
                query(&parts.uri, "token"),
            ) else {
                return reply(400, ls::message("missing parameters"));
            };
            let length = parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Request::Upload {
                session,
                file,
                token,
                length,
            }
        }
        ls::PATH_CANCEL if post => Request::Cancel {
            session: query(&parts.uri, "sessionId").unwrap_or_default(),
        },
        ls::PATH_INFO
        | ls::PATH_REGISTER
        | ls::PATH_PREPARE
        | ls::PATH_UPLOAD
        | ls::PATH_CANCEL => return reply(405, Vec::new()),
        _ => return reply(404, Vec::new()),
    };
    let is_upload = matches!(routed, Request::Upload { .. });
    let req = server.next.fetch_add(1, Ordering::Relaxed);
    let (tx, answers) = async_channel::bounded(ls::WINDOW + 2);
    server
        .open
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(req, tx);
    let mut guard = GoneGuard {
        req,
        server: server.clone(),
        answered: false,
    };
    let input = ls::Input::Request {
        req,
        from,
        request: routed,
    };
    if server.inputs.send(Input::LocalSend(input)).await.is_err() {
        guard.answered = true;
        return reply(503, Vec::new());
    }
    let mut ended = false;
    loop {
        let Ok(answer) = answers.recv().await else {
            guard.answered = true;
            return reply(500, Vec::new());
        };
        match answer {
            Answer::Reply(status, body) => {
                guard.answered = true;
                return reply(status, body);
            }
            Answer::Proceed if is_upload && !ended => {
                let next = match runtime::timeout(BODY_IDLE, async { Ok(body.frame().await) }).await
                {
                    Ok(next) => next,
                    // Too slow: the core hears `Gone` from the guard.
                    Err(_) => return reply(408, Vec::new()),
                };
                let input = match next {
                    None => {
                        ended = true;
                        ls::Input::BodyEnd { req }
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => ls::Input::Body {
                            req,
                            data: data.to_vec(),
                        },
                        // Trailers: nothing to write; ask for the next frame.
                        Err(_) => ls::Input::Body {
                            req,
                            data: Vec::new(),
                        },
                    },
                    Some(Err(err)) => {
                        debug!(%from, "LocalSend upload broke off: {err}");
                        return reply(400, Vec::new());
                    }
                };
                if server.inputs.send(Input::LocalSend(input)).await.is_err() {
                    return reply(503, Vec::new());
                }
            }
            Answer::Proceed => {}
        }
    }
}

// --- the client ---------------------------------------------------------------------------

/// Accepts exactly the certificate whose SHA-256 is `expected` (and checks that the server
/// holds its key: the handshake signatures are verified as usual); remembers what was
/// presented.
#[derive(Debug)]
struct Pinned {
    expected: [u8; 32],
    presented: Mutex<Option<[u8; 32]>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(digest);
        if digest == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the device's certificate has SHA-256 {}, not the fingerprint {}",
                hex::encode(digest),
                hex::encode(self.expected)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

type Tls = futures_rustls::client::TlsStream<TcpStream>;

/// TCP and TLS to `to`, accepting only `fingerprint`'s certificate; the verifier says what
/// was presented.
async fn connect(to: SocketAddr, fingerprint: [u8; 32]) -> (Arc<Pinned>, anyhow::Result<Tls>) {
    let provider = provider();
    let pinned = Arc::new(Pinned {
        expected: fingerprint,
        presented: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let result = async {
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(pinned.clone())
            .with_no_client_auth();
        let connector = futures_rustls::TlsConnector::from(Arc::new(config));
        runtime::timeout(CONNECT_TIMEOUT, async {
            let tcp = TcpStream::connect(to).await?;
            Ok(connector
                .connect(ServerName::IpAddress(to.ip().into()), tcp)
                .await?)
        })
        .await
    }
    .await;
    (pinned, result)
}

/// The SHA-256 of the certificate `to` presents.
async fn probe(to: SocketAddr, claimed: [u8; 32]) -> Result<[u8; 32], String> {
    let (pinned, result) = connect(to, claimed).await;
    let presented = *pinned
        .presented
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match (result, presented) {
        // The handshake completed: the server proved it holds the claimed key.
        (Ok(_), _) => Ok(claimed),
        // Another certificate: reported (the core refuses the claim).
        (Err(_), Some(other)) if other != claimed => Ok(other),
        (Err(err), _) => Err(format!("{err:#}")),
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

/// POSTs `body` to `path` at `to` over pinned HTTPS; the status and the body of the answer
/// (at most `MAX_PREPARE_BYTES`).
async fn post(
    to: SocketAddr,
    fingerprint: [u8; 32],
    path: &str,
    body: Body,
    content_type: &'static str,
    wait: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let (_, tls) = connect(to, fingerprint).await;
    let tls = tls?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(FuturesIo::new(tls))
        .await
        .context("HTTP handshake")?;
    let driver = runtime::spawn(async move {
        let _ = connection.await;
    });
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, to.to_string())
        .header(hyper::header::CONTENT_TYPE, content_type);
    if let Some(len) = body.size_hint().exact() {
        request = request.header(hyper::header::CONTENT_LENGTH, len);
    }
    let request = request.body(body)?;
    let answer = runtime::timeout(wait, async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let mut incoming = response.into_body();
        let body = read_body(&mut incoming, wire::MAX_PREPARE_BYTES)
            .await
            .unwrap_or_default();
        Ok((status, body))
    })
    .await;
    drop(driver);
    answer
}

/// Uploads `file` (`size` bytes) as the body of `path`; the answer's status.
async fn upload(
    to: SocketAddr,
    fingerprint: [u8; 32],
    path: &str,
    file: &PathBuf,
    size: u64,
) -> anyhow::Result<u16> {
    let opened = smol::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let pieces = futures_lite::stream::unfold((opened, size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left.min(ls::MAX_PIECE as u64)).unwrap_or(ls::MAX_PIECE);
        let mut buffer = vec![0u8; want];
        let read = runtime::timeout(UPLOAD_IDLE, async { Ok(file.read(&mut buffer).await?) }).await;
        match read {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when it was queued",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buffer.truncate(n);
                Some((
                    Ok(Frame::data(Bytes::from(buffer))),
                    (file, left - n as u64),
                ))
            }
            Err(err) => Some((Err(std::io::Error::other(err)), (file, 0))),
        }
    });
    let body = StreamBody::new(pieces);
    // The length goes in the header: LocalSend receivers compare it with the announced size.
    let body = http_body_util::BodyExt::boxed(LengthBody { inner: body, size });
    let (status, _) = post(
        to,
        fingerprint,
        path,
        body,
        "application/octet-stream",
        Duration::from_secs(24 * 3600),
    )
    .await?;
    Ok(status)
}

pin_project_lite::pin_project! {
    /// A streamed body whose exact length is known (so it goes out with `Content-Length`).
    struct LengthBody<B> {
        #[pin]
        inner: B,
        size: u64,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for LengthBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let uri: hyper::Uri = "/api/localsend/v2/upload?sessionId=a%20b&fileId=x+y&token=%zz"
            .parse()
            .unwrap();
        assert_eq!(query(&uri, "sessionId").as_deref(), Some("a b"));
        assert_eq!(query(&uri, "fileId").as_deref(), Some("x y"));
        assert_eq!(query(&uri, "token").as_deref(), Some("%zz"));
        assert_eq!(query(&uri, "pin"), None);
    }
}
