//! Trusts exactly the devices its configuration names, when they are discovered or send an
//! offer; says nothing about the others (the next plugin or the node's default decides).
//!
//! Configuration (TOML, the `config` of its fsnode.toml entry or `allowlist.toml` beside the
//! plugin):
//!
//! ```toml
//! devices = ["MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43UOV3HO6DZPI"]  # device ids
//! names = ["alice-*", "build-server"]                      # name patterns (globs)
//! ```

use fsnode_plugin::{NodeFacts, Peer, Policy, TrustDecision};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
}

pub struct Allowlist {
    devices: Vec<String>,
    names: Vec<glob::Pattern>,
}

impl Allowlist {
    fn allows(&self, peer: &Peer) -> bool {
        self.devices
            .iter()
            .any(|id| id.eq_ignore_ascii_case(&peer.id))
            || (!peer.name.is_empty() && self.names.iter().any(|p| p.matches(&peer.name)))
    }

    fn decide(&self, peer: &Peer) -> Option<TrustDecision> {
        self.allows(peer).then_some(TrustDecision::Trust)
    }
}

impl Policy for Allowlist {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(config).map_err(|e| e.to_string())?;
        let names = config
            .names
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("name pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            devices: config.devices,
            names,
        })
    }

    fn on_discovered(&self, _node: &NodeFacts, peer: &Peer) -> Option<TrustDecision> {
        self.decide(peer)
    }

    fn on_offer(&self, _node: &NodeFacts, peer: &Peer) -> Option<TrustDecision> {
        self.decide(peer)
    }
}

fsnode_plugin::plugin!(Allowlist);

#[cfg(test)]
mod tests {
    use super::*;
    use fsnode_plugin::DeviceType;

    fn peer(id: &str, name: &str) -> Peer {
        Peer {
            id: id.into(),
            name: name.into(),
            device_type: DeviceType::Desktop,
            addresses: vec![],
            port: 0,
        }
    }

    #[test]
    fn trusts_listed_ids_and_matching_names_only() {
        let list = Allowlist::configure("devices = [\"AAAA\"]\nnames = [\"alice-*\"]\n").unwrap();
        assert_eq!(list.decide(&peer("aaaa", "x")), Some(TrustDecision::Trust));
        assert_eq!(
            list.decide(&peer("BBBB", "alice-laptop")),
            Some(TrustDecision::Trust)
        );
        assert_eq!(list.decide(&peer("BBBB", "bob")), None);
        assert_eq!(list.decide(&peer("BBBB", "")), None);
    }

    #[test]
    fn empty_config_trusts_nobody_and_bad_config_is_refused() {
        assert_eq!(
            Allowlist::configure("").unwrap().decide(&peer("A", "a")),
            None
        );
        assert!(Allowlist::configure("colour = 1").is_err());
        assert!(Allowlist::configure("names = [\"[\"]").is_err());
    }
}
