//! A small LAN of Linux network namespaces on a bridge, for end-to-end tests that need several
//! hosts with their own addresses and real multicast (mDNS) between them.
//!
//! Layout of a [`Lan`] with `n` hosts, all names unique per Lan (`fsn-<pid>-<counter>`):
//!
//! ```text
//!  namespace fsn-<pid>-<k>-h0        namespace fsn-<pid>-<k>-sw            namespace fsn-<pid>-<k>-h1
//!  eth0 10.77.<lan>.1/24 ── veth ── port0 ─┐                ┌─ port1 ── veth ── eth0 10.77.<lan>.2/24
//!                                          └── br0 (bridge) ┘
//! ```
//!
//! - Nothing is created in, moved to or changed in the root namespace: each veth pair is created
//!   inside the switch namespace and its host end goes straight into the host namespace.
//! - Hosts have the route of their /24 and `224.0.0.0/4 dev eth0` (so multicast can be sent
//!   without choosing an interface, as on a real host with a default route), and no default
//!   route: nothing outside the LAN is reachable.
//! - The bridge floods multicast (IGMP snooping is off), so mDNS to 224.0.0.251:5353 reaches
//!   every host.
//! - Dropping the Lan kills the processes still running in its namespaces and deletes the
//!   namespaces, which destroys the veths, the bridge, nftables rules and qdiscs with them.
//!   [`Lan::new`] first deletes `fsn-*` namespaces left by runs whose process is gone.
//!
//! Needs root, `ip` (iproute2); `nft` (nftables) for [`Lan::drop_percent`], `tc` for
//! [`Lan::shape_rate`], `python3` with the `zeroconf` module for [`Host::browse_mdns`] and
//! [`Host::register_mdns`].

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::process::Output;

/// Prefix of every namespace this harness creates; [`Lan::cleanup_stale`] only looks at these.
pub const NS_PREFIX: &str = "fsn-";
/// Name of each host's interface inside its namespace.
pub const HOST_INTERFACE: &str = "eth0";
/// Name of the bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// The nftables table that [`Lan::drop_percent`] creates in a host namespace.
pub const NFT_TABLE: &str = "fsn";

/// How long any single `ip`/`nft`/`tc` invocation may take.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// The Python interpreter used for the mDNS helpers (found on `PATH`).
const PYTHON: &str = "python3";
/// Exit code of the embedded scripts when `import zeroconf` fails.
const NO_ZEROCONF_EXIT: i32 = 3;

static LAN_COUNTER: AtomicU32 = AtomicU32::new(0);
/// Serialises `ip netns add/del` within this process (the first `ip netns add` on a machine
/// sets up the /run/netns mount, which is racy when done concurrently).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A LAN of host namespaces joined by a bridge in a switch namespace. See the module docs.
pub struct Lan {
    /// Held for the Lan's life: bounds how many LANs (and their nodes) run at once.
    _slot: LanSlot,
    id: String,
    octet: u8,
    switch: String,
    hosts: Vec<Host>,
    /// Every namespace created so far, in creation order (deleted in reverse on drop).
    created: Vec<String>,
}

/// One host of a [`Lan`]: a namespace with one interface on the LAN.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    ns: String,
    switch: String,
    port: String,
    addr: Ipv4Addr,
}

/// A service found by [`Host::browse_mdns`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowsedService {
    /// The full instance name, e.g. `node-a._fsnode._udp.local.`.
    pub instance: String,
    pub port: u16,
    pub addresses: Vec<String>,
    pub txt: BTreeMap<String, String>,
}

impl Lan {
    /// Creates the switch namespace with its bridge and `hosts` host namespaces, host `i` with
    /// [`HOST_INTERFACE`] at `10.77.<lan>.<i+1>/24`. Cleans stale namespaces first.
    pub fn new(hosts: usize) -> anyhow::Result<Lan> {
        ensure!(
            (1..=254).contains(&hosts),
            "a Lan has 1 to 254 hosts, not {hosts}"
        );
        if let Err(e) = Lan::cleanup_stale() {
            eprintln!("fsnode-testkit: cleaning stale namespaces failed: {e:#}");
        }
        let slot = LanSlot::acquire();
        let pid = std::process::id();
        let counter = LAN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{pid}-{counter}");
        let octet = (((u64::from(pid) * 7 + u64::from(counter)) % 250) + 1) as u8;
        let mut lan = Lan {
            _slot: slot,
            switch: format!("{id}-sw"),
            id,
            octet,
            hosts: Vec::new(),
            created: Vec::new(),
        };
        // On any error below, dropping `lan` removes what was created so far.
        lan.build(hosts)?;
        Ok(lan)
    }

    fn build(&mut self, hosts: usize) -> anyhow::Result<()> {
        let sw = self.switch.clone();
        self.add_namespace(&sw)?;
        ip(format!("-n {sw} link set lo up"))?;
        ip(format!(
            "-n {sw} link add {BRIDGE} type bridge mcast_snooping 0 forward_delay 0 stp_state 0"
        ))?;
        ip(format!("-n {sw} link set {BRIDGE} multicast on up"))?;
        for i in 0..hosts {
            let host = Host {
                index: i,
                ns: format!("{}-h{i}", self.id),
                switch: sw.clone(),
                port: format!("port{i}"),
                addr: Ipv4Addr::new(10, 77, self.octet, i as u8 + 1),
            };
            let (ns, port, addr) = (&host.ns, &host.port, host.addr);
            self.add_namespace(ns)?;
            ip(format!("-n {ns} link set lo up"))?;
            // Both ends are created in the switch namespace and the host end moves straight to
            // the host namespace: no veth end ever exists in the root namespace.
            ip(format!(
                "-n {sw} link add {port} type veth peer name {HOST_INTERFACE} netns {ns}"
            ))?;
            ip(format!("-n {sw} link set {port} master {BRIDGE}"))?;
            ip(format!("-n {sw} link set {port} multicast on up"))?;
            ip(format!("-n {ns} addr add {addr}/24 dev {HOST_INTERFACE}"))?;
            ip(format!("-n {ns} link set {HOST_INTERFACE} multicast on up"))?;
            host.add_multicast_route()?;
            self.hosts.push(host);
        }
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        ip(format!("netns add {ns}"))?;
        self.created.push(ns.to_owned());
        Ok(())
    }

    /// Deletes every `fsn-<pid>-…` namespace whose `<pid>` is not a running process (left by a
    /// crashed earlier run), killing any process still inside it first. Returns the names
    /// deleted; a namespace that cannot be deleted is reported on stderr and skipped.
    pub fn cleanup_stale() -> anyhow::Result<Vec<String>> {
        let mut deleted = Vec::new();
        for ns in list_namespaces()? {
            let Some(pid) = ns
                .strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match delete_namespace(&ns) {
                Ok(()) => deleted.push(ns),
                Err(e) => eprintln!("fsnode-testkit: deleting stale namespace {ns}: {e:#}"),
            }
        }
        Ok(deleted)
    }

    /// The hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`. Panics if there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        match self.hosts.get(i) {
            Some(host) => host,
            None => panic!(
                "this Lan has {} hosts, there is no host {i}",
                self.hosts.len()
            ),
        }
    }

    /// The unique prefix of this Lan's namespace names, `fsn-<pid>-<counter>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace holding the bridge.
    pub fn switch_namespace(&self) -> &str {
        &self.switch
    }

    /// Every namespace of this Lan (switch first).
    pub fn namespaces(&self) -> Vec<String> {
        self.created.clone()
    }

    /// The LAN's network, `10.77.<lan>.0` (prefix length 24).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.octet, 0)
    }

    fn checked(&self, i: usize) -> anyhow::Result<&Host> {
        self.hosts.get(i).with_context(|| {
            format!(
                "this Lan has {} hosts, there is no host {i}",
                self.hosts.len()
            )
        })
    }

    /// Sets host `i`'s interface down (in the host namespace): its link is cut.
    pub fn link_down(&self, i: usize) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ip(format!("-n {} link set {HOST_INTERFACE} down", h.ns))?;
        Ok(())
    }

    /// Sets host `i`'s interface up again and restores its multicast route (the kernel drops
    /// routes through an interface that goes down).
    pub fn link_up(&self, i: usize) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ip(format!("-n {} link set {HOST_INTERFACE} up", h.ns))?;
        h.add_multicast_route()
    }

    /// Drops `pct` percent of the packets host `i` receives and, independently, of those it
    /// sends on its LAN interface, at random (nftables `numgen random` in the host namespace,
    /// table `inet fsn`). Replaces an earlier setting; `0` clears it.
    pub fn drop_percent(&self, i: usize, pct: u8) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ensure!(pct <= 100, "drop_percent takes 0 to 100, not {pct}");
        ensure!(
            tool_exists("nft"),
            "drop_percent needs nftables' `nft`, which is not installed (apt-get install nftables)"
        );
        if pct == 0 {
            return self.clear_drop(i);
        }
        // `numgen random mod 100` yields 0..=99, and nft rejects `< 100`.
        let verdict = if pct == 100 {
            "drop".to_owned()
        } else {
            format!("numgen random mod 100 < {pct} drop")
        };
        let rules = format!(
            "add table inet {NFT_TABLE}\n\
             delete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; \
             iifname \"{HOST_INTERFACE}\" {verdict}; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; \
             oifname \"{HOST_INTERFACE}\" {verdict}; }}\n\
             }}\n"
        );
        h.nft(&rules)
    }

    /// A middlebox on host `i`'s link that drops QUIC and passes everything else: UDP
    /// datagrams whose first payload byte has bit 0x40 set (RFC 9443: QUIC's 64-127 and
    /// 192-255; STUN's 0-3 and DTLS's 20-63 have it clear), both directions. Replaces any
    /// [`Lan::drop_percent`]; [`Lan::clear_drop`] removes it.
    pub fn drop_quic(&self, i: usize) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ensure!(
            tool_exists("nft"),
            "drop_quic needs nftables' `nft`, which is not installed (apt-get install nftables)"
        );
        // The transport header is 8 bytes of UDP: the payload's first byte starts at bit 64,
        // and 0x40 is its second bit.
        let verdict = "meta l4proto udp @th,65,1 1 drop";
        let rules = format!(
            "add table inet {NFT_TABLE}\n\
             delete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n\
             \tchain input {{ type filter hook input priority 0; policy accept; \
             iifname \"{HOST_INTERFACE}\" {verdict}; }}\n\
             \tchain output {{ type filter hook output priority 0; policy accept; \
             oifname \"{HOST_INTERFACE}\" {verdict}; }}\n\
             }}\n"
        );
        h.nft(&rules)
    }

    /// Removes what [`Lan::drop_percent`] set on host `i` (a no-op when nothing is set).
    pub fn clear_drop(&self, i: usize) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ensure!(
            tool_exists("nft"),
            "clear_drop needs nftables' `nft`, which is not installed (apt-get install nftables)"
        );
        h.nft(&format!(
            "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        ))
    }

    /// Limits host `i`'s link to `rate` (a tc rate such as `"1gbit"`, `"20mbit"`, `"500kbit"`)
    /// in both directions: a tbf qdisc on the host's interface (what it sends) and on its
    /// bridge port (what it receives). The burst is 10 ms worth of the rate, at least 16 KiB.
    pub fn shape_rate(&self, i: usize, rate: &str) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        let bytes_per_sec = parse_tc_rate(rate)?;
        let burst = (bytes_per_sec / 100).max(16 * 1024);
        for (ns, dev) in [(&h.ns, HOST_INTERFACE), (&h.switch, h.port.as_str())] {
            tc(format!(
                "-n {ns} qdisc replace dev {dev} root tbf rate {rate} burst {burst} latency 100ms"
            ))?;
        }
        Ok(())
    }

    /// Removes what [`Lan::shape_rate`] set on host `i` (a no-op when nothing is set).
    pub fn clear_shape(&self, i: usize) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        for (ns, dev) in [(&h.ns, HOST_INTERFACE), (&h.switch, h.port.as_str())] {
            let out = tc(format!("-n {ns} qdisc show dev {dev} root"))?;
            if out.stdout.contains("tbf") {
                tc(format!("-n {ns} qdisc del dev {dev} root"))?;
            }
        }
        Ok(())
    }

    /// Sets the MTU of both ends of host `i`'s link (its interface and its bridge port).
    pub fn set_mtu(&self, i: usize, mtu: u32) -> anyhow::Result<()> {
        let h = self.checked(i)?;
        ip(format!("-n {} link set {HOST_INTERFACE} mtu {mtu}", h.ns))?;
        ip(format!("-n {} link set {} mtu {mtu}", h.switch, h.port))?;
        Ok(())
    }
}

/// LANs allowed to exist at once in this process. The end-to-end tests time real processes
/// (discovery within 3 s, connections within seconds); on a 2-core machine, a dozen LANs of
/// live nodes at once would measure the scheduler, not fsnode.
pub const MAX_CONCURRENT_LANS: usize = 3;

static LAN_SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

struct LanSlot;

impl LanSlot {
    fn acquire() -> LanSlot {
        let (lock, freed) = &LAN_SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_CONCURRENT_LANS {
            used = freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        LanSlot
    }
}

impl Drop for LanSlot {
    fn drop(&mut self) {
        let (lock, freed) = &LAN_SLOTS;
        let mut used = lock.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        freed.notify_one();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = delete_namespace(ns) {
                eprintln!("fsnode-testkit: deleting namespace {ns}: {e:#}");
            }
        }
    }
}

impl Host {
    /// The host's namespace.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// The host's LAN interface inside its namespace ([`HOST_INTERFACE`]).
    pub fn interface(&self) -> &str {
        HOST_INTERFACE
    }

    /// The host's address on the LAN (prefix length 24).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's index in its [`Lan`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// A command that runs `program` inside this host's namespace (`ip netns exec NS program`);
    /// add arguments, environment and stdio as usual. The child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Pings `to` once from this host (`ping -c 1 -W 2`); true when a reply came back, false
    /// when none did or the host has no route (its link is down). An error when ping is missing.
    pub fn ping(&self, to: Ipv4Addr) -> anyhow::Result<bool> {
        let out = run_bounded(
            self.command("ping")
                .args(["-n", "-c", "1", "-W", "2"])
                .arg(to.to_string()),
            Duration::from_secs(5),
        )?;
        // `ip netns exec` says "exec of \"ping\" failed" when it cannot run ping; ping itself
        // exits 1 without a reply and 2 on errors such as "Network is unreachable" (link down).
        if out.stderr.contains("exec of") {
            bail!("ping could not run in {}: {}", self.ns, out.stderr.trim());
        }
        Ok(out.success())
    }

    /// Browses mDNS for `service_type` (`_fsnode._udp` or `_fsnode._udp.local.`) from this host
    /// for `timeout`, with python-zeroconf bound to this host's address, and returns the
    /// services resolved by then (those removed during the browse are left out).
    pub fn browse_mdns(
        &self,
        service_type: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<BrowsedService>> {
        let stype = full_service_type(service_type);
        let out = run_bounded(
            self.command(PYTHON)
                .args(["-c", BROWSE_SCRIPT, &stype, &self.addr.to_string()])
                .arg(timeout.as_secs_f64().to_string()),
            timeout + Duration::from_secs(15),
        )
        .with_context(|| format!("browsing mDNS for {stype} in {}", self.ns))?;
        check_python(&out, "browsing mDNS")?;
        parse_browsed(&out.stdout)
            .with_context(|| format!("reading the browse output {:?}", out.stdout))
    }

    /// Advertises `instance` of `service_type` on `port` with the TXT record `txt` from this
    /// host with python-zeroconf, for at most `lifetime`. Returns once the service is
    /// registered (probing done); the returned guard unregisters it on [`MdnsRegistration::stop`]
    /// and kills the advertiser on drop.
    pub fn register_mdns(
        &self,
        service_type: &str,
        instance: &str,
        port: u16,
        txt: &BTreeMap<String, String>,
        lifetime: Duration,
    ) -> anyhow::Result<MdnsRegistration> {
        let stype = full_service_type(service_type);
        let txt_json = serde_json::to_string(txt)?;
        let mut process = Background::spawn(
            self.command(PYTHON)
                .args([
                    "-c",
                    REGISTER_SCRIPT,
                    &stype,
                    instance,
                    &self.addr.to_string(),
                ])
                .arg(port.to_string())
                .arg(lifetime.as_secs_f64().to_string())
                .arg(txt_json),
        )?;
        match process.wait_line(|l| l == "registered", Duration::from_secs(15)) {
            Ok(_) => Ok(MdnsRegistration { process }),
            Err(e) => {
                let out = process.finish(Duration::from_secs(2));
                if let Ok(out) = &out {
                    check_python(out, "registering an mDNS service")?;
                }
                Err(e.context(format!("registering {instance}.{stype} in {}", self.ns)))
            }
        }
    }

    fn add_multicast_route(&self) -> anyhow::Result<()> {
        ip(format!(
            "-n {} route replace 224.0.0.0/4 dev {HOST_INTERFACE}",
            self.ns
        ))?;
        Ok(())
    }

    /// Loads an nftables ruleset (`nft -f`) in this host's namespace.
    pub fn nft(&self, rules: &str) -> anyhow::Result<()> {
        let dir = tempfile::tempdir().context("creating a directory for nft rules")?;
        let file = dir.path().join("rules.nft");
        std::fs::write(&file, rules).context("writing nft rules")?;
        let mut cmd = self.command("nft");
        cmd.arg("-f").arg(&file);
        run_ok(&mut cmd).with_context(|| format!("nft rules were:\n{rules}"))?;
        Ok(())
    }
}

/// An mDNS advertisement made by [`Host::register_mdns`].
pub struct MdnsRegistration {
    process: Background,
}

impl MdnsRegistration {
    /// Unregisters the service (sending mDNS goodbyes) and waits, bounded, for the advertiser
    /// to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.process.signal(rustix::process::Signal::TERM)?;
        let out = self.process.finish(Duration::from_secs(5))?;
        ensure!(
            out.success(),
            "the mDNS advertiser exited with {:?}: {}",
            out.code,
            out.stderr.trim()
        );
        Ok(())
    }
}

/// A child process whose stdout lines and stderr are collected by threads, killed on drop.
pub struct Background {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    description: String,
}

impl Background {
    /// Spawns `command` with stdin closed and stdout/stderr captured.
    pub fn spawn(command: &mut Command) -> anyhow::Result<Background> {
        let description = describe(command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{description}`"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        Ok(Background {
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr,
            description,
        })
    }

    /// The child's pid.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits (bounded) for a stdout line satisfying `pred` and returns it; lines before it are
    /// kept for [`Background::finish`].
    pub fn wait_line(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "`{}` printed no expected line within {timeout:?}; stdout so far {:?}, stderr {:?}",
                    self.description,
                    self.seen,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => bail!(
                    "`{}` closed its output without the expected line; stdout {:?}, stderr {:?}",
                    self.description,
                    self.seen,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let child = self
            .child
            .as_ref()
            .context("the process was already waited for")?;
        rustix::process::kill_process(rustix::process::Pid::from_child(child), signal)
            .with_context(|| format!("sending {signal:?} to `{}`", self.description))
    }

    /// Waits (bounded; killed after `timeout`) for the child to exit and returns everything it
    /// printed.
    pub fn finish(&mut self, timeout: Duration) -> anyhow::Result<Output> {
        let mut child = self
            .child
            .take()
            .context("the process was already waited for")?;
        let status = wait_bounded(&mut child, timeout)?;
        // The reader threads end when the pipes close; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        let Some(status) = status else {
            bail!(
                "`{}` did not exit within {timeout:?}; stdout {:?}, stderr {:?}",
                self.description,
                self.seen,
                self.stderr_text()
            );
        };
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        Ok(Output {
            code: status.code(),
            stdout,
            stderr: self.stderr_text(),
        })
    }

    /// What the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` up to `timeout`; on timeout kills it and returns `None`.
fn wait_bounded(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` to completion with stdin closed, killing it after `timeout` (an error).
pub fn run_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut process = Background::spawn(command)?;
    process.finish(timeout)
}

/// Like [`run_bounded`] with [`TOOL_TIMEOUT`], and an error when the command fails, naming the
/// command and quoting its stderr.
fn run_ok(command: &mut Command) -> anyhow::Result<Output> {
    let description = describe(command);
    let out = run_bounded(command, TOOL_TIMEOUT)?;
    if !out.success() {
        bail!(
            "`{description}` failed (exit {:?}): {}",
            out.code,
            out.stderr.trim()
        );
    }
    Ok(out)
}

/// Runs `ip ARGS` (whitespace-separated; our names never contain spaces), bounded.
fn ip(args: impl AsRef<str>) -> anyhow::Result<Output> {
    run_ok(Command::new("ip").args(args.as_ref().split_whitespace()))
}

/// Runs `tc ARGS` (whitespace-separated), bounded.
fn tc(args: impl AsRef<str>) -> anyhow::Result<Output> {
    run_ok(Command::new("tc").args(args.as_ref().split_whitespace()))
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        if arg.contains('\n') {
            text.push_str("<script>");
        } else {
            text.push_str(&arg);
        }
    }
    text
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(name).is_file())
}

/// The names from `ip netns list`.
fn list_namespaces() -> anyhow::Result<Vec<String>> {
    let out = ip("netns list")?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills the processes inside `ns` and deletes it.
fn delete_namespace(ns: &str) -> anyhow::Result<()> {
    if let Ok(out) = ip(format!("netns pids {ns}")) {
        for pid in out.stdout.split_whitespace() {
            let Some(pid) = pid
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(format!("netns del {ns}"))?;
    Ok(())
}

/// Bytes per second of a tc rate (`bit`/`kbit`/`mbit`/`gbit`/`tbit`, `bps`/`kbps`/… for bytes,
/// a bare number is bits; `k`/`m`/`g`/`t` count in thousands, `kibit`/`mibps`… in 1024s).
fn parse_tc_rate(rate: &str) -> anyhow::Result<u64> {
    let lower = rate.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("{rate:?} is not a tc rate such as \"1gbit\""))?;
    let (prefix, bytes) = if let Some(p) = unit.strip_suffix("bps") {
        (p, true)
    } else if let Some(p) = unit.strip_suffix("bit") {
        (p, false)
    } else if unit.is_empty() {
        ("", false)
    } else {
        bail!("{rate:?} is not a tc rate such as \"1gbit\"");
    };
    let scale = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => bail!("{rate:?} is not a tc rate such as \"1gbit\""),
    };
    let bits_or_bytes = number * scale;
    let per_sec = if bytes {
        bits_or_bytes
    } else {
        bits_or_bytes / 8.0
    };
    ensure!(per_sec >= 1.0, "{rate:?} is too small a rate");
    Ok(per_sec as u64)
}

fn full_service_type(service_type: &str) -> String {
    let trimmed = service_type.trim_end_matches('.');
    if trimmed.ends_with(".local") {
        format!("{trimmed}.")
    } else {
        format!("{trimmed}.local.")
    }
}

fn check_python(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.code == Some(NO_ZEROCONF_EXIT) && out.stderr.contains("zeroconf") {
        bail!(
            "{what} needs the python module zeroconf for {PYTHON}: pip install zeroconf ({})",
            out.stderr.trim()
        );
    }
    if !out.success() {
        bail!(
            "{what}: {PYTHON} exited with {:?}: {}",
            out.code,
            out.stderr.trim()
        );
    }
    Ok(())
}

fn parse_browsed(stdout: &str) -> anyhow::Result<Vec<BrowsedService>> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .context("no JSON list in the output")?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    let items = value.as_array().context("not a JSON list")?;
    let mut services = Vec::new();
    for item in items {
        let instance = item["instance"].as_str().context("no instance")?.to_owned();
        let port = item["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("no port")?;
        let addresses = item["addresses"]
            .as_array()
            .context("no addresses")?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let txt = item["txt"]
            .as_object()
            .context("no txt")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        services.push(BrowsedService {
            instance,
            port,
            addresses,
            txt,
        });
    }
    services.sort_by(|a, b| a.instance.cmp(&b.instance));
    Ok(services)
}

/// argv: service type, interface address, seconds. Prints one JSON list of resolved services.
const BROWSE_SCRIPT: &str = r#"
import json, queue, sys, time
try:
    from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf
except ImportError as e:
    print("cannot import zeroconf: %s" % e, file=sys.stderr)
    sys.exit(3)
stype, addr, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
zc = Zeroconf(interfaces=[addr], ip_version=IPVersion.V4Only)
changes = queue.Queue()
def on_change(zeroconf, service_type, name, state_change):
    changes.put((name, state_change))
browser = ServiceBrowser(zc, stype, handlers=[on_change])
found = {}
def text(b):
    return b.decode("utf-8", "replace") if b is not None else ""
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    try:
        name, change = changes.get(timeout=min(left, 0.1))
    except queue.Empty:
        continue
    if change is ServiceStateChange.Removed:
        found.pop(name, None)
        continue
    info = ServiceInfo(stype, name)
    left = deadline - time.monotonic()
    if left > 0 and info.request(zc, max(1, int(left * 1000))):
        found[name] = {
            "instance": name,
            "port": info.port,
            "addresses": info.parsed_addresses(),
            "txt": {text(k): text(v) for k, v in info.properties.items()},
        }
browser.cancel()
zc.close()
print(json.dumps(list(found.values())), flush=True)
"#;

/// argv: service type, instance, interface address, port, lifetime seconds, TXT as JSON.
/// Prints "registered" once registered; unregisters on SIGTERM or after the lifetime.
const REGISTER_SCRIPT: &str = r#"
import json, signal, socket, sys, threading
try:
    from zeroconf import IPVersion, ServiceInfo, Zeroconf
except ImportError as e:
    print("cannot import zeroconf: %s" % e, file=sys.stderr)
    sys.exit(3)
stype, instance, addr, port, lifetime, txt = sys.argv[1:7]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
zc = Zeroconf(interfaces=[addr], ip_version=IPVersion.V4Only)
info = ServiceInfo(
    stype,
    "%s.%s" % (instance, stype),
    addresses=[socket.inet_aton(addr)],
    port=int(port),
    properties=json.loads(txt),
    server="%s.local." % instance.replace(" ", "-").replace(".", "-"),
)
# cooperating_responders: announce even a name another host already holds (tests of
# impostors need that; unique names are unaffected).
zc.register_service(info, cooperating_responders=True)
print("registered", flush=True)
stop.wait(float(lifetime))
zc.unregister_service(info)
zc.close()
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Receives one UDP datagram on group:port, joined on the given interface address, and
    /// prints "ready" once joined, then "<source> <payload>"; exits 1 after 3 s without one.
    const RECEIVE_ONE: &str = r#"
import socket, sys
group, port, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(addr))
s.settimeout(3)
print("ready", flush=True)
data, src = s.recvfrom(2048)
print(src[0], data.decode(), flush=True)
"#;

    /// Sends one UDP datagram to group:port with TTL 255, like mDNS, without choosing an
    /// interface (the host's multicast route does).
    const SEND_ONE: &str = r#"
import socket, sys
group, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.sendto(payload.encode(), (group, port))
"#;

    fn listed() -> Vec<String> {
        list_namespaces().unwrap()
    }

    fn ping_eventually(from: &Host, to: Ipv4Addr) -> bool {
        (0..3).any(|_| from.ping(to).unwrap())
    }

    #[test]
    fn hosts_ping_each_other_and_nothing_outside() {
        let lan = Lan::new(2).unwrap();
        let (a, b) = (lan.host(0), lan.host(1));
        assert_eq!(
            a.addr(),
            Ipv4Addr::new(10, 77, lan.network().octets()[2], 1)
        );
        assert_eq!(
            b.addr(),
            Ipv4Addr::new(10, 77, lan.network().octets()[2], 2)
        );
        assert!(a.ping(b.addr()).unwrap(), "host 0 cannot ping host 1");
        assert!(b.ping(a.addr()).unwrap(), "host 1 cannot ping host 0");

        // No default route: the kernel refuses anything off the LAN (asked without sending).
        let out = run_bounded(
            Command::new("ip").args(["-n", a.name(), "route", "get", "192.0.2.1"]),
            TOOL_TIMEOUT,
        )
        .unwrap();
        assert!(!out.success(), "a route leaves the LAN: {}", out.stdout);
        assert!(out.stderr.contains("unreachable"), "{}", out.stderr);

        // Links are multicast-capable and the bridge does not snoop.
        let link = ip(format!("-n {} -d link show {HOST_INTERFACE}", a.name())).unwrap();
        assert!(link.stdout.contains("MULTICAST"), "{}", link.stdout);
        let bridge = ip(format!(
            "-n {} -d link show {BRIDGE}",
            lan.switch_namespace()
        ))
        .unwrap();
        assert!(
            bridge.stdout.contains("mcast_snooping 0"),
            "{}",
            bridge.stdout
        );

        // No veth end of ours is in the root namespace.
        let root = ip("-o link show type veth").unwrap();
        assert!(!root.stdout.contains(lan.id()), "{}", root.stdout);
    }

    #[test]
    fn multicast_crosses_the_bridge() {
        let lan = Lan::new(3).unwrap();
        let (group, port) = ("224.0.0.251", "5353");
        let mut receivers = Vec::new();
        for i in [1, 2] {
            let host = lan.host(i);
            let mut receiver = Background::spawn(host.command(PYTHON).args([
                "-c",
                RECEIVE_ONE,
                group,
                port,
                &host.addr().to_string(),
            ]))
            .unwrap();
            receiver
                .wait_line(|l| l == "ready", Duration::from_secs(10))
                .unwrap();
            receivers.push(receiver);
        }
        let sent = run_bounded(
            lan.host(0)
                .command(PYTHON)
                .args(["-c", SEND_ONE, group, port, "hello-lan"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(sent.success(), "sending failed: {}", sent.stderr);
        for mut receiver in receivers {
            let out = receiver.finish(Duration::from_secs(10)).unwrap();
            assert!(out.success(), "no datagram arrived: {}", out.stderr);
            assert!(
                out.stdout
                    .contains(&format!("{} hello-lan", lan.host(0).addr())),
                "{}",
                out.stdout
            );
        }
    }

    #[test]
    fn drop_deletes_every_namespace_and_kills_their_processes() {
        let lan = Lan::new(2).unwrap();
        let names = lan.namespaces();
        assert_eq!(names.len(), 3);
        let before = listed();
        assert!(names.iter().all(|n| before.contains(n)), "{before:?}");
        let mut sleeper = lan
            .host(1)
            .command("sh")
            .args(["-c", "echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Only once it printed is it surely inside the namespace (`ip netns exec` has run).
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sleeper.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "ready\n");
        drop(lan);
        let after = listed();
        assert!(names.iter().all(|n| !after.contains(n)), "{after:?}");
        let status = wait_bounded(&mut sleeper, Duration::from_secs(5)).unwrap();
        assert!(
            status.is_some(),
            "the process inside the namespace survived"
        );
    }

    #[test]
    fn drop_deletes_namespaces_when_the_test_panics() {
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&names);
        let result = std::panic::catch_unwind(move || {
            let lan = Lan::new(1).unwrap();
            *seen.lock().unwrap() = lan.namespaces();
            assert!(listed().contains(&lan.host(0).name().to_owned()));
            panic!("a failing test");
        });
        assert!(result.is_err());
        let names = names.lock().unwrap().clone();
        assert_eq!(names.len(), 2);
        let after = listed();
        assert!(names.iter().all(|n| !after.contains(n)), "{after:?}");
    }

    #[test]
    fn cleanup_stale_deletes_namespaces_of_dead_processes() {
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let stale = format!("{NS_PREFIX}{}-0-h0", gone.id());
        ip(format!("netns add {stale}")).unwrap();
        let ours = Lan::new(1).unwrap();
        // Lan::new already cleaned it; a second pass finds nothing of ours or of it.
        assert!(!listed().contains(&stale), "{stale} survived");
        let deleted = Lan::cleanup_stale().unwrap();
        assert!(!deleted.contains(&stale));
        assert!(listed().contains(&ours.host(0).name().to_owned()));
    }

    #[test]
    fn faults_are_real_and_reversible() {
        let lan = Lan::new(2).unwrap();
        let (a, b) = (lan.host(0), lan.host(1));
        assert!(ping_eventually(a, b.addr()));

        lan.link_down(1).unwrap();
        assert!(
            !a.ping(b.addr()).unwrap(),
            "ping crossed a link that is down"
        );
        assert!(
            !b.ping(a.addr()).unwrap(),
            "ping left a host whose link is down"
        );
        lan.link_up(1).unwrap();
        assert!(
            ping_eventually(a, b.addr()),
            "link_up did not restore the link"
        );
        let routes = ip(format!("-n {} route", b.name())).unwrap();
        assert!(routes.stdout.contains("224.0.0.0/4"), "{}", routes.stdout);

        lan.drop_percent(1, 100).unwrap();
        assert!(!a.ping(b.addr()).unwrap(), "ping crossed a 100% drop");
        lan.drop_percent(1, 30).unwrap();
        let rules = run_ok(b.command("nft").args(["list", "table", "inet", NFT_TABLE])).unwrap();
        assert!(
            rules.stdout.contains("numgen random mod 100 < 30"),
            "{}",
            rules.stdout
        );
        lan.clear_drop(1).unwrap();
        lan.clear_drop(1).unwrap();
        assert!(
            ping_eventually(a, b.addr()),
            "clear_drop did not restore the link"
        );

        lan.shape_rate(1, "1gbit").unwrap();
        lan.shape_rate(1, "20mbit").unwrap();
        let qdisc = tc(format!("-n {} qdisc show dev {HOST_INTERFACE}", b.name())).unwrap();
        assert!(
            qdisc.stdout.contains("tbf") && qdisc.stdout.contains("20Mbit"),
            "{}",
            qdisc.stdout
        );
        assert!(ping_eventually(a, b.addr()));
        lan.clear_shape(1).unwrap();
        lan.clear_shape(1).unwrap();
        let qdisc = tc(format!("-n {} qdisc show dev {HOST_INTERFACE}", b.name())).unwrap();
        assert!(!qdisc.stdout.contains("tbf"), "{}", qdisc.stdout);

        lan.set_mtu(1, 1280).unwrap();
        let link = ip(format!("-n {} link show {HOST_INTERFACE}", b.name())).unwrap();
        assert!(link.stdout.contains("mtu 1280"), "{}", link.stdout);
        // A 1400-byte unfragmentable ping from host 1 no longer fits; a small one does.
        let big = run_bounded(
            b.command("ping")
                .args(["-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400"])
                .arg(a.addr().to_string()),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!big.success(), "a 1400-byte packet passed an MTU of 1280");
        assert!(ping_eventually(b, a.addr()));
        lan.set_mtu(1, 1500).unwrap();
    }

    #[test]
    fn browse_finds_a_service_registered_in_another_namespace() {
        let lan = Lan::new(2).unwrap();
        let txt = BTreeMap::from([
            ("id".to_owned(), "node-a-key".to_owned()),
            ("v".to_owned(), "1".to_owned()),
        ]);
        let registration = lan
            .host(0)
            .register_mdns(
                "_fsnode-test._udp",
                "node-a",
                4242,
                &txt,
                Duration::from_secs(15),
            )
            .unwrap();
        let found = lan
            .host(1)
            .browse_mdns("_fsnode-test._udp.local.", Duration::from_secs(3))
            .unwrap();
        assert_eq!(
            found,
            vec![BrowsedService {
                instance: "node-a._fsnode-test._udp.local.".to_owned(),
                port: 4242,
                addresses: vec![lan.host(0).addr().to_string()],
                txt,
            }]
        );
        registration.stop().unwrap();
    }

    #[test]
    fn a_missing_zeroconf_module_says_how_to_install_it() {
        let out = Output {
            code: Some(NO_ZEROCONF_EXIT),
            stdout: String::new(),
            stderr: "cannot import zeroconf: No module named 'zeroconf'\n".to_owned(),
        };
        let err = check_python(&out, "browsing mDNS").unwrap_err().to_string();
        assert!(err.contains("pip install zeroconf"), "{err}");
    }

    #[test]
    fn tc_rates_parse() {
        assert_eq!(parse_tc_rate("1gbit").unwrap(), 125_000_000);
        assert_eq!(parse_tc_rate("20Mbit").unwrap(), 2_500_000);
        assert_eq!(parse_tc_rate("8000").unwrap(), 1000);
        assert_eq!(parse_tc_rate("1mbps").unwrap(), 1_000_000);
        assert_eq!(parse_tc_rate("1kibit").unwrap(), 128);
        assert!(parse_tc_rate("fast").is_err());
        assert!(parse_tc_rate("1gb").is_err());
    }
}
