//! The mDNS adapter (mdns-sd): announces this node, browses for others, and turns what it sees
//! into core inputs. Confined to the operator's interfaces (or every non-loopback interface).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, warn};

use crate::core::discovery::{self, Announcement, SERVICE_TYPE};
use crate::core::node::{Input, Me};

/// TXT entries read from one announcement; the rest are dropped (bounded memory).
const MAX_TXT_ENTRIES: usize = 32;

pub struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Mdns {
    /// Starts announcing and browsing. Inputs go to `inputs` until the node stops.
    pub fn start(
        me: &Me,
        interfaces: &[String],
        inputs: async_channel::Sender<Input>,
    ) -> anyhow::Result<Self> {
        let daemon = ServiceDaemon::new().context("starting the mDNS daemon")?;
        // Interface selection is queued before anything is registered or browsed, so nothing
        // is ever sent on an interface the operator did not allow.
        if interfaces.is_empty() {
            daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        } else {
            daemon.disable_interface(IfKind::All)?;
            for name in interfaces {
                daemon.enable_interface(IfKind::Name(name.clone()))?;
            }
        }
        let instance = discovery::instance_name(&me.id);
        let host = format!("fsnode-{}.local.", me.id.short());
        let txt: Vec<(String, String)> = discovery::txt_records(&me.id, &me.name, me.device_type);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            (),
            me.signaling_port,
            &txt[..],
        )
        .context("building the mDNS service record")?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).context("announcing over mDNS")?;
        let events = daemon.browse(SERVICE_TYPE).context("browsing mDNS")?;
        std::thread::Builder::new()
            .name("fsnode-mdns".into())
            .spawn(move || forward(events, inputs))
            .context("starting the mDNS thread")?;
        Ok(Self { daemon, fullname })
    }

    /// The daemon, confined to the served interfaces (for `.local` lookups: `local_names`).
    pub fn daemon(&self) -> ServiceDaemon {
        self.daemon.clone()
    }

    /// Sends goodbyes (TTL 0) and stops the daemon, waiting at most a second for each.
    pub fn shutdown(self) {
        match self.daemon.unregister(&self.fullname) {
            Ok(done) => {
                if done.recv_timeout(Duration::from_secs(1)).is_err() {
                    warn!("mDNS goodbye not confirmed within 1 s");
                }
            }
            Err(err) => warn!("mDNS goodbye failed: {err}"),
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

fn forward(events: mdns_sd::Receiver<ServiceEvent>, inputs: async_channel::Sender<Input>) {
    while let Ok(event) = events.recv() {
        let input = match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(instance) = instance_label(&service.fullname) else {
                    continue;
                };
                let txt: BTreeMap<String, String> = service
                    .txt_properties
                    .iter()
                    .take(MAX_TXT_ENTRIES)
                    .map(|p| (p.key().to_ascii_lowercase(), p.val_str().to_owned()))
                    .collect();
                Input::Announced(Announcement {
                    instance,
                    port: service.port,
                    addresses: service.addresses.iter().map(|a| a.to_ip_addr()).collect(),
                    txt,
                })
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let Some(instance) = instance_label(&fullname) else {
                    continue;
                };
                Input::Withdrawn { instance }
            }
            other => {
                debug!(?other, "mDNS");
                continue;
            }
        };
        if inputs.send_blocking(input).is_err() {
            return;
        }
    }
}

/// `Peer-abc._fileshare._tcp.local.` → `Peer-abc`.
fn instance_label(fullname: &str) -> Option<String> {
    let label = fullname.strip_suffix(SERVICE_TYPE)?.strip_suffix('.')?;
    Some(label.chars().take(256).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_labels_are_cut_from_full_names() {
        assert_eq!(
            instance_label("Peer-abc._fileshare._tcp.local.").as_deref(),
            Some("Peer-abc")
        );
        assert_eq!(instance_label("Peer-abc._http._tcp.local."), None);
    }
}
