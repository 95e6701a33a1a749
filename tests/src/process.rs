//! Running `fsnode` commands and daemons against a temporary home.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A throwaway `FSNODE_HOME` and the binary to run in it. Dropping it kills any daemon it
/// started and deletes the directory.
pub struct NodeHome {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    /// The network namespace every command runs in (`None`: the caller's).
    namespace: Option<String>,
    daemon: Option<Daemon>,
}

/// A running `fsnode run` and the thread that drains its stderr (a full pipe would stall a
/// daemon that logs a lot, say under a flood).
struct Daemon {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Daemon {
    fn new(mut child: Child) -> Self {
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = std::io::Read::read_to_end(&mut pipe, &mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        });
        Self { child, stderr }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl NodeHome {
    /// A home whose commands run in the caller's network namespace. Only for commands that
    /// send nothing (`id`, `journal`): a daemon must run in a test namespace (`in_host`).
    pub fn new(bin: impl Into<PathBuf>) -> anyhow::Result<Self> {
        Ok(Self {
            bin: bin.into(),
            dir: tempfile::tempdir().context("creating a temporary home")?,
            namespace: None,
            daemon: None,
        })
    }

    /// A home whose commands (the daemon included) run inside `host`'s network namespace.
    pub fn in_host(bin: impl Into<PathBuf>, host: &crate::Host) -> anyhow::Result<Self> {
        let mut home = Self::new(bin)?;
        home.namespace = Some(host.name().to_owned());
        Ok(home)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.path().join("data/journal")
    }

    /// The command line for `fsnode ARGS…` in this home (and its namespace), for tests that
    /// run a client in the background (`fsnode watch`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = match &self.namespace {
            // `ip netns exec` execs the program, so the child's pid is fsnode's own.
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        command
            .args(args)
            .env("FSNODE_HOME", self.path())
            .env_remove("FSNODE_LOG")
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to completion (bounded by `timeout`).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {args:?}", self.bin.display()))?;
        finish_within(child, COMMAND_LIMIT).with_context(|| format!("fsnode {args:?}"))
    }

    /// Starts `fsnode run ARGS…` in the background.
    pub fn start(&mut self, args: &[&str]) -> anyhow::Result<()> {
        if self.namespace.is_none() {
            bail!("a daemon multicasts: start it in a test namespace (NodeHome::in_host)");
        }
        if self.daemon.is_some() {
            bail!("a daemon is already running in this home");
        }
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let child = self
            .command(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting fsnode run")?;
        self.daemon = Some(Daemon::new(child));
        Ok(())
    }

    /// Starts `fsnode run ARGS…` with its receive directory on a tmpfs of `size` bytes that
    /// exists only in the daemon's own mount namespace (`unshare --mount`, private
    /// propagation): nothing else on the machine sees it, and it vanishes with the daemon.
    /// Reach its files through [`NodeHome::daemon_root`].
    pub fn start_with_small_disk(&mut self, args: &[&str], size: u64) -> anyhow::Result<()> {
        let Some(namespace) = self.namespace.clone() else {
            bail!("a daemon multicasts: start it in a test namespace (NodeHome::in_host)");
        };
        if self.daemon.is_some() {
            bail!("a daemon is already running in this home");
        }
        let receive = self.path().join("received");
        std::fs::create_dir_all(&receive)?;
        // Each step execs the next, so the child's pid ends up being fsnode's own.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &namespace])
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" fsnode-test "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(size.to_string())
            .arg(&receive)
            .arg(&self.bin)
            .arg("run")
            .args(args)
            .env("FSNODE_HOME", self.path())
            .env_remove("FSNODE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = command.spawn().context("starting fsnode run on a tmpfs")?;
        self.daemon = Some(Daemon::new(child));
        Ok(())
    }

    /// The daemon's view of `path` (through `/proc/PID/root`, so inside its mount namespace).
    pub fn daemon_root(&self, path: &Path) -> Option<PathBuf> {
        let pid = self.daemon_pid()?;
        let relative = path.strip_prefix("/").unwrap_or(path);
        Some(PathBuf::from(format!("/proc/{pid}/root")).join(relative))
    }

    /// The daemon's process id, while one runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|d| d.child.id())
    }

    /// Sends `signal` to the daemon and waits (bounded) for it to exit; returns its output.
    pub fn stop_with(
        &mut self,
        signal: rustix::process::Signal,
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let Daemon { mut child, stderr } = self.daemon.take().context("no daemon running")?;
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).context("signalling the daemon")?;
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not exit within {timeout:?} of {signal:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = child.wait()?;
        let stderr = stderr
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Output {
            code: status.code(),
            stdout: String::new(),
            stderr,
        })
    }

    /// Waits (bounded) until `check` holds, polling.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("condition not met within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for NodeHome {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
    }
}

/// How long one `fsnode` command may take in a test or bench before it is killed: a command
/// that hangs (a `send --wait` that is never told the transfer finished) must fail the test,
/// not hold CI until its overall limit.
pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Waits for `child` (stdout and stderr piped) at most `limit`, then kills it and fails.
fn finish_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> anyhow::Result<Output> {
    use std::io::Read;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("did not finish within {limit:?}; killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(Output {
        code: status.code(),
        stdout: text(stdout),
        stderr: text(stderr),
    })
}
