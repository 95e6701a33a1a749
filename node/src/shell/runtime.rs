//! Everything runtime-specific in the IO shell lives here: the one real clock, spawning,
//! timers, timeouts and the runtime webrtc-rs runs on (smol). The core never reads time; the
//! shell reads it here and passes it in. Swapping this module (webrtc-rs's `MockRuntime` and a
//! virtual clock) is how the shell can run on virtual time.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::sync::Arc;
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

/// Resolves at `at`, or never for `None`.
pub async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => smol::Timer::at(at).await,
        None => smol::Timer::never().await,
    };
}

/// `future`, or an error once `timeout` has passed.
pub async fn timeout<T>(
    timeout: Duration,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    futures_lite::future::or(future, async {
        sleep(timeout).await;
        anyhow::bail!("timed out after {timeout:?}")
    })
    .await
}

/// The runtime webrtc-rs drives its peer connections on.
pub fn webrtc() -> Arc<dyn webrtc::runtime::Runtime> {
    Arc::new(webrtc::runtime::SmolRuntime)
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
