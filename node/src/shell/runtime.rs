//! Everything runtime-specific in the IO shell lives here: the one real clock, spawning,
//! timers and timeouts (smol). The core never reads time; the
//! shell reads it here and passes it in. Swapping this module (a virtual clock) is how the shell can
//! run on virtual time.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The runtime's sockets.
pub mod net {
    pub use smol::net::unix::{UnixListener, UnixStream};
    pub use smol::net::{TcpListener, TcpStream};
}

/// A spawned task; dropping it cancels the task, `detach` lets it run on.
pub type Task<T> = smol::Task<T>;

/// Runs `future` on the node's executor.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> Task<T> {
    smol::spawn(future)
}

/// Runs the node's top-level future on this thread.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    smol::block_on(future)
}

/// Runs blocking work (file IO, hashing) on the runtime's thread pool, off the node's loop.
pub async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    smol::unblock(work).await
}

pub async fn sleep(duration: Duration) {
    smol::Timer::after(duration).await;
}

/// The timer of a loop that recomputes its next deadline every turn (the node's loop, a peer's
/// links). async-io wakes its reactor's thread for every timer registered, and a busy loop
/// that registered one per turn paid a thread switch per turn for it. This one registers
/// again only when the deadline moves earlier than the one registered, or that one has
/// fired: it may wake a loop early, never late, and a loop's timeout handling does nothing
/// that is not due.
pub struct Deadline {
    /// When the registered timer fires; `None` when none is registered.
    armed: Option<Instant>,
    timer: smol::Timer,
}

impl Default for Deadline {
    fn default() -> Self {
        Self {
            armed: None,
            timer: smol::Timer::never(),
        }
    }
}

impl Deadline {
    /// Resolves at `at` or earlier (at a deadline registered before that has not fired yet),
    /// never for `None` with none registered. Dropping the future keeps the timer for the
    /// next call.
    pub async fn wait(&mut self, at: Option<Instant>) {
        if let Some(at) = at
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.armed = Some(at);
            self.timer.set_at(at);
        }
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        (&mut self.timer).await;
        self.armed = None;
    }
}

/// `future`, or an error once `timeout` has passed.
pub async fn timeout<T>(
    timeout: Duration,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    futures_lite::future::or(future, async {
        sleep(timeout).await;
        Err(TimedOut(timeout).into())
    })
    .await
}

/// The error of [`timeout`] when the time ran out (callers tell it from others by type).
#[derive(Debug, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// Kernel buffer fsnode asks for on each WebRTC UDP socket, each direction. A data channel at
/// LAN rates delivers bursts of a whole SCTP window back to back; the 208 KiB default of
/// `net.core.rmem_default` overflows (`RcvbufErrors` in /proc/net/snmp), every drop costs a
/// retransmission and halves SCTP's congestion window.
pub const UDP_BUFFER_REQUEST: usize = 16 * 1024 * 1024;

/// Sets `sock`'s receive and send buffers to [`UDP_BUFFER_REQUEST`]: `SO_RCVBUFFORCE` (root or
/// CAP_NET_ADMIN may exceed `net.core.rmem_max`) first, else `SO_RCVBUF` (capped by the
/// kernel at `rmem_max`); the same for sending. Returns the receive buffer obtained, as the
/// kernel reports it (twice the payload it will hold, for its bookkeeping).
pub fn size_udp_buffers(sock: &std::net::UdpSocket) -> usize {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(sock, UDP_BUFFER_REQUEST).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(sock, UDP_BUFFER_REQUEST);
    }
    if sockopt::set_socket_send_buffer_size_force(sock, UDP_BUFFER_REQUEST).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(sock, UDP_BUFFER_REQUEST);
    }
    sockopt::socket_recv_buffer_size(sock).unwrap_or(0)
}

/// The receive buffer a WebRTC UDP socket of this process gets (measured once on a probe
/// socket, logged), so that the SCTP receive window can be sized from it before any peer
/// connection exists.
pub fn udp_buffer_bytes() -> usize {
    static OBTAINED: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *OBTAINED.get_or_init(|| {
        let obtained = std::net::UdpSocket::bind(("127.0.0.1", 0))
            .map(|sock| size_udp_buffers(&sock))
            .unwrap_or(0);
        tracing::debug!(
            requested = UDP_BUFFER_REQUEST,
            obtained,
            "UDP socket receive buffer for WebRTC"
        );
        if obtained < UDP_BUFFER_REQUEST {
            tracing::info!(
                obtained,
                "the kernel capped fsnode's UDP receive buffer (net.core.rmem_max); raising \
                 it to {} or running with CAP_NET_ADMIN speeds up transfers",
                UDP_BUFFER_REQUEST
            );
        }
        obtained
    })
}

/// Open files a node asks for: every running transfer holds one (its source or its `.part`),
/// and every session its sockets. A receiver takes up to 128 transfers from each sender at
/// once, so the usual soft limit of 1,024 is a handful of senders' worth.
pub const OPEN_FILES_WANTED: u64 = 65_536;

/// Raises the process's soft limit on open files towards [`OPEN_FILES_WANTED`], within the
/// hard limit (which an unprivileged process may not raise); returns the soft limit it has.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit
        .maximum
        .map_or(OPEN_FILES_WANTED, |hard| hard.min(OPEN_FILES_WANTED));
    if limit.current.is_some_and(|soft| soft < wanted) {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::info!("cannot raise the open-file limit to {wanted}: {err}");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    tracing::debug!(?soft, "open-file limit");
    soft
}

/// Time as the shell sees it: monotonic for timers, wall clock for journal stamps.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;

    /// Wall-clock milliseconds since the unix epoch (negative before 1970).
    fn wall_ms(&self) -> i64 {
        match self.wall().duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Measures how long something took (`plugins check`, benchmarks), on the real clock.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_raised_within_the_hard_limit() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        let soft = raise_open_file_limit();
        let wanted = hard.map_or(OPEN_FILES_WANTED, |h| h.min(OPEN_FILES_WANTED));
        assert!(soft.is_none_or(|s| s >= wanted), "{soft:?} < {wanted}");
        assert!(hard.is_none_or(|h| soft.is_some_and(|s| s <= h)));
    }

    /// A loop's deadline: a later one keeps the earlier timer (an early wake), an earlier one
    /// replaces it, and after one fired the same deadline registers again.
    #[test]
    fn a_deadline_wakes_early_never_late() {
        block_on(async {
            let mut deadline = Deadline::default();
            let start = Instant::now();
            let soon = start + Duration::from_millis(20);
            // A turn that ended before its timer fired leaves it registered.
            let taken = futures_lite::future::or(
                async {
                    deadline.wait(Some(soon)).await;
                    false
                },
                async { true },
            )
            .await;
            assert!(taken, "the other branch is ready first");
            // A later deadline keeps the earlier timer: it wakes at `soon`, not in 10 s.
            deadline.wait(Some(start + Duration::from_secs(10))).await;
            assert!(start.elapsed() < Duration::from_secs(5));
            assert!(Instant::now() >= soon);
            // Fired: the next deadline is registered anew, even one already past.
            deadline.wait(Some(soon)).await;
            // An earlier deadline replaces a later one.
            let at = Instant::now() + Duration::from_millis(10);
            let raced = futures_lite::future::or(
                async {
                    deadline.wait(Some(at + Duration::from_secs(10))).await;
                    false
                },
                async {
                    sleep(Duration::from_millis(1)).await;
                    true
                },
            )
            .await;
            assert!(raced);
            deadline.wait(Some(at)).await;
            assert!(Instant::now() >= at && start.elapsed() < Duration::from_secs(5));
        });
    }
}
