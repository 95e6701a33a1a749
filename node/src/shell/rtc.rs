//! The WebRTC adapter: fsnode's own link machines ([`crate::core::link`]) driven over real UDP
//! sockets. It only moves datagrams and timers: one task per peer owns that peer's sessions
//! and performs the negotiation machine's actions strictly in order, reporting back as core
//! inputs. Each session has its own sockets, bound only to the addresses fsnode serves (ICE's
//! host candidates; ICE's mDNS mode is off), with 16 MiB kernel buffers.
//!
//! Sessions (spec 3.3): every offer answered is a new session with fresh sockets and ICE
//! credentials. Which session carries data, replacing an old one and mapping actions to link
//! calls is `core::link::sessions` (sans-IO, also driven by the whole-node simulation); this
//! adapter binds each session's sockets and moves its datagrams and timers.
//!
//! The sockets go through quinn-udp: one `sendmsg` carries a link's batch of QUIC datagrams
//! (GSO, where the kernel has it), one `recvmmsg` reads up to [`RECEIVE_BATCH`] buffers each
//! holding up to 64 KiB of coalesced datagrams (GRO), and the ECN bits travel both ways. STUN
//! and DTLS go out and come in on the same sockets, one datagram at a time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use smol::Async;
use tracing::{debug, warn};

use crate::core::DeviceId;
use crate::core::link::quic::QuicSettings;
use crate::core::link::sessions::{SessionId, SessionOutput, Sessions};
use crate::core::link::{self, LinkConfig, SctpTuning, Transmit};
use crate::core::negotiation::{Action, Input as NegotiationInput};
use crate::core::node::Input;
use crate::identity::Identity;
use crate::shell::runtime::{self, Clock, SystemClock};

/// The pre-negotiated data channel of spec 3.3: label `fileshare`, negotiated, id 0, ordered,
/// reliable.
pub const CHANNEL_LABEL: &str = "fileshare";

/// The largest message fsnode sends or accepts, advertised in offers and answers: spec 4 then
/// gives 128 KiB chunks between fsnode nodes.
pub const MAX_MESSAGE_SIZE: u32 = link::MAX_MESSAGE_SIZE;

/// Commands a peer task takes in one turn before its outputs go out (datagrams, messages,
/// actions): enough to bundle what arrives together, few enough that a flood of datagrams
/// still gets its acknowledgements out.
const COMMAND_BATCH: usize = 256;

/// Each receive buffer: the largest datagram, or GRO's largest run of coalesced datagrams
/// (any larger datagram is truncated and dropped by its transport): spec 5's larger datagrams
/// stay below it.
const RECEIVE_BUFFER: usize = 65536;
/// Buffers one `recvmmsg` fills (shared by every socket of the links thread).
pub const RECEIVE_BATCH: usize = 8;

/// Commands to one peer's task.
enum Command {
    Act(Action),
    Send(Vec<u8>),
    /// Datagrams from one source that arrived together: `bytes` holds them back to back,
    /// each `stride` bytes long (the last may be shorter).
    Datagrams {
        session: u64,
        from: SocketAddr,
        to: SocketAddr,
        ecn: Option<u8>,
        stride: usize,
        bytes: Vec<u8>,
    },
}

/// The smallest MTU among the interfaces of `ips` (every non-loopback interface for an
/// unspecified address); `None` when none can be read.
pub fn interface_mtu(ips: &[IpAddr]) -> Option<u32> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    interfaces
        .iter()
        .filter(|i| {
            ips.iter().any(|ip| {
                if ip.is_unspecified() {
                    !i.is_loopback() && ip.is_ipv4() == i.ip().is_ipv4()
                } else {
                    *ip == i.ip()
                }
            })
        })
        .filter_map(|i| {
            std::fs::read_to_string(format!("/sys/class/net/{}/mtu", i.name))
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        })
        .min()
}

/// The largest UDP payload the path carries: the interface MTU less 48 bytes of IPv6 + UDP
/// headers (the larger of the two IP versions), or the default datagram size when unknown.
pub fn path_max_datagram(interface_mtu: Option<u32>) -> usize {
    match interface_mtu {
        Some(mtu) => (mtu as usize).saturating_sub(48).min(65507),
        None => link::DEFAULT_MAX_DATAGRAM,
    }
}

/// The SCTP receive window (`a_rwnd`, what the peer may have in flight to us) for a UDP socket
/// receive buffer of `socket_buffer` bytes as the kernel reports it: a quarter of it, within
/// 1 MiB and 8 MiB. A window as large as the socket buffer overflows it when the node is slow
/// to read for a moment (each datagram costs the kernel about twice its size).
pub fn sctp_receive_window(socket_buffer: usize) -> usize {
    const MIN: usize = 1024 * 1024;
    const MAX: usize = 8 * 1024 * 1024;
    (socket_buffer / 4).clamp(MIN, MAX)
}

/// The addresses sessions bind: the served ones, or for an unspecified address every
/// non-loopback address of that family (ICE needs each candidate's own socket).
fn session_ips(served: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for ip in served {
        if ip.is_unspecified() {
            if let Ok(interfaces) = if_addrs::get_if_addrs() {
                for i in interfaces {
                    let candidate = i.ip();
                    let link_local_v6 =
                        matches!(candidate, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                    if !i.is_loopback()
                        && candidate.is_ipv4() == ip.is_ipv4()
                        && !link_local_v6
                        && !ips.contains(&candidate)
                    {
                        ips.push(candidate);
                    }
                }
            }
        } else if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    ips
}

/// What every session of this node shares.
struct Settings {
    identity: Arc<Identity>,
    ips: Vec<IpAddr>,
    path_max_datagram: usize,
    receive_window: usize,
    quic: QuicSettings,
}

/// Carries out the negotiation machines' actions: one task per peer owns its sessions and
/// performs that peer's actions strictly in order, reporting back as core inputs.
pub struct RtcAdapter {
    settings: Arc<Settings>,
    inputs: async_channel::Sender<Input>,
    peers: HashMap<DeviceId, PeerHandle>,
    /// The links thread: SCTP sockets are not `Send`, so every peer task runs there.
    spawner: async_channel::Sender<PeerSpec>,
}

/// What the links thread builds a peer task from.
struct PeerSpec {
    peer: DeviceId,
    settings: Arc<Settings>,
    inputs: async_channel::Sender<Input>,
    commands: async_channel::Sender<Command>,
    receiver: async_channel::Receiver<Command>,
    open: Arc<AtomicBool>,
}

/// Runs every peer task, and the readers of its sessions' sockets, on one thread of its own
/// (a local executor on smol's reactor): a datagram goes from its socket to its link without
/// a thread handover.
fn start_links_thread() -> async_channel::Sender<PeerSpec> {
    let (tx, rx) = async_channel::unbounded::<PeerSpec>();
    let spawned = std::thread::Builder::new()
        .name("fsnode-links".into())
        .spawn(move || {
            let executor = Rc::new(smol::LocalExecutor::new());
            runtime::block_on(executor.run(async {
                while let Ok(spec) = rx.recv().await {
                    let task = PeerTask {
                        peer: spec.peer,
                        settings: spec.settings,
                        inputs: spec.inputs,
                        commands: spec.commands,
                        open: spec.open,
                        sessions: Sessions::new(),
                        sockets: HashMap::new(),
                        executor: executor.clone(),
                    };
                    executor.spawn(task.run(spec.receiver)).detach();
                }
            }));
        });
    if let Err(err) = spawned {
        warn!("cannot start the links thread: {err}");
    }
    tx
}

struct PeerHandle {
    commands: async_channel::Sender<Command>,
    open: Arc<AtomicBool>,
}

impl RtcAdapter {
    pub fn new(
        identity: Arc<Identity>,
        udp_addrs: Vec<SocketAddr>,
        quic: QuicSettings,
        inputs: async_channel::Sender<Input>,
    ) -> Self {
        let served: Vec<IpAddr> = udp_addrs.iter().map(SocketAddr::ip).collect();
        let ips = session_ips(&served);
        let settings = Settings {
            identity,
            path_max_datagram: path_max_datagram(interface_mtu(&ips)),
            receive_window: sctp_receive_window(runtime::udp_buffer_bytes()),
            ips,
            quic,
        };
        Self {
            settings: Arc::new(settings),
            inputs,
            peers: HashMap::new(),
            spawner: start_links_thread(),
        }
    }

    /// Queues one binary message on `peer`'s `fileshare` channel; false if no channel is open.
    /// (Bounded by the transfer windows: the core never has more than a window in flight.)
    pub fn send(&self, peer: &DeviceId, data: Vec<u8>) -> bool {
        self.peers.get(peer).is_some_and(|handle| {
            handle.open.load(Ordering::Acquire)
                && handle.commands.try_send(Command::Send(data)).is_ok()
        })
    }

    /// Hands `action` to `peer`'s task. The task (and its `Sessions`) outlives a `Close`: it
    /// remembers spec 6's fallback for the peer; it holds no socket while no session is up.
    pub fn act(&mut self, peer: &DeviceId, action: Action) {
        if action == Action::Close && !self.peers.contains_key(peer) {
            return;
        }
        let handle = self.peers.entry(peer.clone()).or_insert_with(|| {
            let (tx, rx) = async_channel::unbounded();
            let open = Arc::new(AtomicBool::new(false));
            let spec = PeerSpec {
                peer: peer.clone(),
                settings: self.settings.clone(),
                inputs: self.inputs.clone(),
                commands: tx.clone(),
                receiver: rx,
                open: open.clone(),
            };
            // Unbounded; the thread lives as long as the process.
            let _ = self.spawner.try_send(spec);
            PeerHandle { commands: tx, open }
        });
        if action == Action::Close {
            // Nothing is sent from now on, whenever the task gets to the close.
            handle.open.store(false, Ordering::Release);
        }
        // The channel is unbounded and the task lives as long as the adapter.
        let _ = handle.commands.try_send(Command::Act(action));
    }
}

/// One session socket with quinn-udp's state for it (GSO, GRO, ECN).
struct UdpSocket {
    io: Async<std::net::UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl UdpSocket {
    /// Sends `transmit` (a GSO batch in one call where the kernel still takes one).
    async fn send(&self, transmit: &Transmit) -> std::io::Result<()> {
        let ecn = transmit.ecn.and_then(quinn_udp::EcnCodepoint::from_bits);
        let segments = transmit
            .segment_size
            .map_or(1, |size| transmit.bytes.len().div_ceil(size.max(1)));
        if segments <= self.state.max_gso_segments() {
            let datagrams = quinn_udp::Transmit {
                destination: transmit.to,
                ecn,
                contents: &transmit.bytes,
                segment_size: transmit.segment_size.filter(|_| segments > 1),
                src_ip: None,
            };
            return self
                .io
                .write_with(|socket| self.state.send(socket.into(), &datagrams))
                .await;
        }
        // quinn-udp turned GSO off after the kernel refused it: one datagram at a time.
        for datagram in transmit.datagrams() {
            let one = quinn_udp::Transmit {
                destination: transmit.to,
                ecn,
                contents: datagram,
                segment_size: None,
                src_ip: None,
            };
            self.io
                .write_with(|socket| self.state.send(socket.into(), &one))
                .await?;
        }
        Ok(())
    }
}

/// A session's sockets (their reader tasks end when it is dropped).
struct SessionSockets {
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    _readers: Vec<runtime::Task<()>>,
}

struct PeerTask {
    peer: DeviceId,
    settings: Arc<Settings>,
    inputs: async_channel::Sender<Input>,
    commands: async_channel::Sender<Command>,
    open: Arc<AtomicBool>,
    /// Which session carries data and how actions map to links (`core::link::sessions`).
    sessions: Sessions,
    sockets: HashMap<SessionId, SessionSockets>,
    /// The links thread's executor, where the session sockets' readers run.
    executor: Rc<smol::LocalExecutor<'static>>,
}

impl PeerTask {
    async fn run(mut self, commands: async_channel::Receiver<Command>) {
        let mut timer = runtime::Deadline::default();
        loop {
            let deadline = self.sessions.poll_timeout();
            let command = futures_lite::future::or(async { commands.recv().await.ok() }, async {
                timer.wait(deadline).await;
                None
            })
            .await;
            let now = SystemClock.now();
            let mut next = command;
            let mut taken = 0;
            // Everything already waiting goes in before the outputs go out: the messages the
            // node queued together leave in as few SCTP packets as they fit in, and the
            // datagrams that came together get one acknowledgement.
            while let Some(command) = next {
                self.handle(command, now);
                taken += 1;
                next = if taken < COMMAND_BATCH {
                    commands.try_recv().ok()
                } else {
                    None
                };
            }
            self.sessions.advance(now);
            self.flush_outputs().await;
        }
    }

    fn handle(&mut self, command: Command, now: Instant) {
        match command {
            Command::Act(action) => self.perform(action, now),
            Command::Send(data) => {
                // No channel: the transfer layer resends after reconnecting.
                let _ = self.sessions.send(data);
            }
            Command::Datagrams {
                session,
                from,
                to,
                ecn,
                stride,
                bytes,
            } => {
                for datagram in bytes.chunks(stride.max(1)) {
                    self.sessions.deliver(session, from, to, ecn, datagram, now);
                }
            }
        }
    }

    /// Performs one action; a session it makes gets the sockets bound for it.
    fn perform(&mut self, action: Action, now: Instant) {
        let id = self.sessions.next_id();
        let mut bound = None;
        let settings = &self.settings;
        let peer = &self.peer;
        let result = self.sessions.act(action, now, &mut || {
            let (sockets, config) = bind(settings, peer)?;
            bound = Some(sockets);
            Ok(config)
        });
        if let Err(reason) = result {
            warn!(peer = %self.peer, "WebRTC: {reason}");
        }
        if let Some(sockets) = bound
            && self.sessions.ids().any(|s| s == id)
        {
            let readers = sockets
                .iter()
                .map(|(local, socket)| {
                    self.executor.spawn(read_socket(
                        id,
                        *local,
                        socket.clone(),
                        self.commands.clone(),
                    ))
                })
                .collect();
            self.sockets.insert(
                id,
                SessionSockets {
                    sockets,
                    _readers: readers,
                },
            );
        }
    }

    /// Sends the sessions' datagrams, reports their events, and drops the sockets of every
    /// session that is gone.
    async fn flush_outputs(&mut self) {
        while let Some(output) = self.sessions.poll_output() {
            match output {
                SessionOutput::Transmit { session, transmit } => {
                    if let Some(socket) = self.sockets.get(&session).and_then(|s| {
                        s.sockets
                            .iter()
                            .find(|(addr, _)| *addr == transmit.from)
                            .map(|(_, socket)| socket)
                    }) && let Err(err) = socket.send(&transmit).await
                    {
                        debug!("UDP send to {}: {err}", transmit.to);
                    }
                }
                SessionOutput::Negotiation(event) => {
                    // The open flag changes before the core hears of it.
                    self.open
                        .store(self.sessions.is_carrying(), Ordering::Release);
                    self.report(event).await;
                }
                SessionOutput::Message(data) => {
                    let _ = self
                        .inputs
                        .send(Input::Channel {
                            peer: self.peer.clone(),
                            data,
                        })
                        .await;
                }
            }
        }
        self.open
            .store(self.sessions.is_carrying(), Ordering::Release);
        let alive: Vec<SessionId> = self.sessions.ids().collect();
        self.sockets.retain(|id, _| alive.contains(id));
    }

    async fn report(&self, event: NegotiationInput) {
        let _ = self
            .inputs
            .send(Input::Rtc {
                peer: self.peer.clone(),
                event,
            })
            .await;
    }
}

/// Fresh sockets on every served address, and the link configuration for them.
#[allow(clippy::type_complexity)]
fn bind(
    settings: &Settings,
    peer: &DeviceId,
) -> Result<(Vec<(SocketAddr, Arc<UdpSocket>)>, LinkConfig), String> {
    let mut sockets = Vec::new();
    let mut gso_segments = usize::MAX;
    for ip in &settings.ips {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(*ip, 0))
            .map_err(|e| format!("binding a UDP socket on {ip}: {e}"))?;
        runtime::size_udp_buffers(&socket);
        let local = socket
            .local_addr()
            .map_err(|e| format!("reading a socket address: {e}"))?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())
            .map_err(|e| format!("UDP socket options on {local}: {e}"))?;
        gso_segments = gso_segments.min(state.max_gso_segments());
        let io = Async::new(socket).map_err(|e| format!("UDP socket: {e}"))?;
        sockets.push((local, Arc::new(UdpSocket { io, state })));
    }
    if sockets.is_empty() {
        return Err("no address to bind a UDP socket on".into());
    }
    // The link's ICE credentials and DTLS randoms come from this: the OS's randomness.
    let seed: [u8; 32] = rand::random();
    let config = LinkConfig {
        certificate: settings.identity.certificate.dtls_certificate.clone(),
        peer: peer.clone(),
        local_addrs: sockets.iter().map(|(addr, _)| *addr).collect(),
        path_max_datagram: settings.path_max_datagram,
        advertise_max_datagram: None,
        max_message_size: MAX_MESSAGE_SIZE,
        sctp: SctpTuning {
            receive_window: settings.receive_window,
            ..SctpTuning::default()
        },
        quic: QuicSettings {
            max_segments: settings.quic.max_segments.min(gso_segments).max(1),
            ..settings.quic.clone()
        },
        seed,
    };
    Ok((sockets, config))
}

/// Datagrams a socket's reader forwards before it lets its peer task run: the reader shares
/// the links thread with it, and a peer that sends faster than the link handles must not
/// fill the command queue without bound.
const READ_BURST: usize = 64;

thread_local! {
    /// The receive buffers of the links thread: its readers take turns, each copying out what
    /// one `recvmmsg` returned before the next runs.
    static RECEIVE: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0; RECEIVE_BUFFER * RECEIVE_BATCH]);
}

/// What one `recvmmsg` read: (source, ECN bits, stride, datagrams back to back).
type Received = Vec<(SocketAddr, Option<u8>, usize, Vec<u8>)>;

/// One `recvmmsg` on `socket` into the thread's buffers.
fn receive(
    socket: &std::net::UdpSocket,
    state: &quinn_udp::UdpSocketState,
) -> std::io::Result<Received> {
    RECEIVE.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let mut meta = [quinn_udp::RecvMeta::default(); RECEIVE_BATCH];
        let mut slices: Vec<std::io::IoSliceMut<'_>> = buffer
            .chunks_mut(RECEIVE_BUFFER)
            .map(std::io::IoSliceMut::new)
            .collect();
        let count = state.recv(socket.into(), &mut slices, &mut meta)?;
        Ok(meta[..count]
            .iter()
            .zip(slices.iter())
            .map(|(meta, slice)| {
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                (
                    meta.addr,
                    meta.ecn.map(|e| e as u8),
                    stride,
                    slice[..meta.len].to_vec(),
                )
            })
            .collect())
    })
}

/// Forwards a session socket's datagrams to its peer task until the session is dropped.
async fn read_socket(
    session: u64,
    local: SocketAddr,
    socket: Arc<UdpSocket>,
    commands: async_channel::Sender<Command>,
) {
    let mut burst = 0;
    loop {
        if burst >= READ_BURST {
            burst = 0;
            futures_lite::future::yield_now().await;
        }
        match socket.io.read_with(|io| receive(io, &socket.state)).await {
            Ok(received) => {
                for (from, ecn, stride, bytes) in received {
                    burst += bytes.len().div_ceil(stride.max(1));
                    let command = Command::Datagrams {
                        session,
                        from,
                        to: local,
                        ecn,
                        stride,
                        bytes,
                    };
                    if commands.send(command).await.is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                // ICMP errors (port unreachable after the peer went) surface here; go on.
                debug!("UDP receive on {local}: {err}");
                if err.kind() != std::io::ErrorKind::ConnectionRefused {
                    runtime::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_settings_follow_the_sockets() {
        // Datagrams: the interface MTU less IPv6 + UDP headers; the default when unknown.
        assert_eq!(path_max_datagram(Some(1500)), 1452);
        assert_eq!(path_max_datagram(Some(65536)), 65488);
        assert_eq!(path_max_datagram(None), 1472);
        // Receive window: a quarter of the socket buffer, 1 to 8 MiB.
        assert_eq!(sctp_receive_window(425_984), 1 << 20);
        assert_eq!(sctp_receive_window(8 << 20), 2 << 20);
        assert_eq!(sctp_receive_window(32 << 20), 8 << 20);
    }

    /// A fresh identity in a temporary directory (kept alive by the returned guard).
    fn test_identity() -> (tempfile::TempDir, Identity) {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::load_or_create(
            &dir.path().join("id.pem"),
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000),
        )
        .unwrap();
        (dir, identity)
    }

    async fn next_rtc(inputs: &async_channel::Receiver<Input>) -> NegotiationInput {
        loop {
            let input = runtime::timeout(std::time::Duration::from_secs(10), async {
                inputs.recv().await.map_err(|e| anyhow::anyhow!("{e}"))
            })
            .await
            .unwrap();
            if let Input::Rtc { event, .. } = input {
                return event;
            }
        }
    }

    /// Two adapters on loopback, signaling passed by hand: the offer's fingerprint is the
    /// node's device id (spec 1), candidates name only the served address and the data
    /// m-line, the channel opens on QUIC (GSO batches through quinn-udp) and carries a
    /// message, and `Close` ends it.
    #[test]
    fn two_adapters_connect_over_loopback_udp() {
        connect_over_loopback([true, true], link::TransportKind::Quic);
    }

    /// The same with QUIC switched off on one side: DTLS and SCTP on the same sockets.
    #[test]
    fn two_adapters_connect_over_loopback_udp_on_the_data_channel() {
        connect_over_loopback([true, false], link::TransportKind::DataChannel);
    }

    fn connect_over_loopback(quic: [bool; 2], want: link::TransportKind) {
        let (_da, ia) = test_identity();
        let (_db, ib) = test_identity();
        let (id_a, id_b) = (ia.device_id.clone(), ib.device_id.clone());
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (tx_a, rx_a) = async_channel::unbounded();
        let (tx_b, rx_b) = async_channel::unbounded();
        let settings = |enabled| QuicSettings {
            enabled,
            ..QuicSettings::default()
        };
        let mut a = RtcAdapter::new(Arc::new(ia), vec![lo], settings(quic[0]), tx_a);
        let mut b = RtcAdapter::new(Arc::new(ib), vec![lo], settings(quic[1]), tx_b);
        runtime::block_on(async {
            a.act(&id_b, Action::CreateOffer);
            let NegotiationInput::LocalOffer { sdp: offer } = next_rtc(&rx_a).await else {
                panic!("no offer");
            };
            assert_eq!(
                crate::core::sdp::sha256_fingerprints(&offer).unwrap(),
                vec![id_a.clone()]
            );
            let mut candidates = Vec::new();
            loop {
                match next_rtc(&rx_a).await {
                    NegotiationInput::LocalCandidate(c) if c.candidate.is_empty() => break,
                    NegotiationInput::LocalCandidate(c) => candidates.push(c),
                    other => panic!("{other:?}"),
                }
            }
            assert!(!candidates.is_empty());
            for c in &candidates {
                assert!(c.candidate.contains(" 127.0.0.1 "), "{c:?}");
                assert!(!c.candidate.contains(".local"), "{c:?}");
                assert_eq!(
                    (c.sdp_mid.as_deref(), c.sdp_mline_index),
                    (Some("0"), Some(0))
                );
            }
            b.act(&id_a, Action::AnswerOffer { sdp: offer });
            assert_eq!(next_rtc(&rx_b).await, NegotiationInput::RemoteApplied);
            let NegotiationInput::LocalAnswer { sdp: answer } = next_rtc(&rx_b).await else {
                panic!("no answer");
            };
            a.act(&id_b, Action::ApplyAnswer { sdp: answer });
            for c in candidates {
                b.act(&id_a, Action::AddCandidate(c));
            }
            let mut open = (false, false);
            while open != (true, true) {
                let (side, event) =
                    futures_lite::future::or(async { (0, next_rtc(&rx_a).await) }, async {
                        (1, next_rtc(&rx_b).await)
                    })
                    .await;
                match (side, event) {
                    (0, NegotiationInput::ChannelOpen { transport }) => {
                        assert_eq!(transport, want);
                        open.0 = true
                    }
                    (1, NegotiationInput::ChannelOpen { transport }) => {
                        assert_eq!(transport, want);
                        open.1 = true
                    }
                    (_, NegotiationInput::Lost { reason }) => panic!("lost: {reason}"),
                    _ => {}
                }
            }
            assert!(a.send(&id_b, vec![9; 100_000]));
            let message = runtime::timeout(std::time::Duration::from_secs(10), async {
                loop {
                    // QUIC's opening frame comes first; the core ignores it.
                    if let Ok(Input::Channel { data, .. }) = rx_b.recv().await
                        && data != link::quic::opening_frame()
                    {
                        return Ok(data);
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(message, vec![9; 100_000]);
            a.act(&id_b, Action::Close);
            assert!(!a.send(&id_b, vec![1]), "no channel after Close");
            // B hears of the close at once (DTLS close_notify, QUIC's CONNECTION_CLOSE), not
            // after ICE's timeout.
            loop {
                if let NegotiationInput::Lost { .. } = next_rtc(&rx_b).await {
                    break;
                }
            }
        });
    }

    #[test]
    fn sessions_bind_only_the_served_addresses() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(session_ips(&[lo, lo]), vec![lo]);
        let all = session_ips(&["0.0.0.0".parse().unwrap()]);
        assert!(all.iter().all(|ip| ip.is_ipv4() && !ip.is_loopback()));
    }
}
