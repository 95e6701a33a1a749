//! mDNS / DNS-SD announcements (spec section 2), checked before they become peers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{DeviceId, DeviceType};

/// The DNS-SD service type fsnode announces and browses.
pub const SERVICE_TYPE: &str = "_fileshare._tcp.local.";
/// Instance names are `Peer-<device id>`.
pub const INSTANCE_PREFIX: &str = "Peer-";
/// The `name` TXT value is at most 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;
/// Addresses kept per peer; more are dropped (bounded memory whatever a peer announces).
pub const MAX_ADDRESSES: usize = 16;

/// A resolved service, as the mDNS adapter hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The instance label, e.g. `Peer-abc…` (without the service type).
    pub instance: String,
    pub port: u16,
    pub addresses: Vec<IpAddr>,
    pub txt: BTreeMap<String, String>,
}

/// A peer as an announcement describes it, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    pub id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
}

/// The device id an instance label names, if it has the `Peer-<id>` form.
pub fn instance_device_id(instance: &str) -> Option<DeviceId> {
    instance.strip_prefix(INSTANCE_PREFIX)?.parse().ok()
}

/// The instance label for a device.
pub fn instance_name(id: &DeviceId) -> String {
    format!("{INSTANCE_PREFIX}{id}")
}

/// Checks an announcement against spec section 2. `Err` carries the reason it is ignored.
pub fn check(announcement: &Announcement) -> Result<Announced, String> {
    let Some(instance_id) = instance_device_id(&announcement.instance) else {
        return Err("instance name is not Peer-<device id>".into());
    };
    match announcement.txt.get("v").map(String::as_str) {
        None => return Err("TXT has no `v`".into()),
        Some("1") => {}
        Some(other) => {
            return Err(format!(
                "TXT `v` is {:?}, this node speaks 1",
                truncate(other)
            ));
        }
    }
    let Some(txt_id) = announcement.txt.get("id") else {
        return Err("TXT has no `id`".into());
    };
    if txt_id != instance_id.as_str() {
        return Err(format!(
            "TXT `id` {:?} does not match the instance name",
            truncate(txt_id)
        ));
    }
    let name = announcement.txt.get("name").cloned().unwrap_or_default();
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "TXT `name` has {} bytes, more than {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if announcement.port == 0 {
        return Err("SRV port is 0".into());
    }
    let device_type = announcement
        .txt
        .get("type")
        .map_or(DeviceType::Unknown, |t| DeviceType::from_wire(t));
    let mut addresses: Vec<IpAddr> = announcement
        .addresses
        .iter()
        .copied()
        .filter(|ip| !is_unscoped_link_local(ip))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses.truncate(MAX_ADDRESSES);
    Ok(Announced {
        id: instance_id,
        name,
        device_type,
        addresses,
        port: announcement.port,
    })
}

/// An IPv6 link-local address (`fe80::/10`) is reachable only through the interface it was
/// seen on (its scope), which an announcement's address list does not carry: dialling it
/// fails (`EINVAL`), and recording it would only make the device's addresses change with
/// every announcement that lists it or not.
pub fn is_unscoped_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The TXT records this node announces.
pub fn txt_records(id: &DeviceId, name: &str, device_type: DeviceType) -> Vec<(String, String)> {
    vec![
        ("v".into(), "1".into()),
        ("id".into(), id.to_string()),
        ("name".into(), name.into()),
        ("type".into(), device_type.as_str().into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Announcement {
        let id = DeviceId::from_sha256(&[3; 32]);
        Announcement {
            instance: instance_name(&id),
            port: 4000,
            addresses: vec!["10.77.0.3".parse().unwrap(), "10.77.0.3".parse().unwrap()],
            txt: txt_records(&id, "desk", DeviceType::Server)
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_spec_announcement_becomes_a_peer() {
        let peer = check(&good()).unwrap();
        assert_eq!(peer.id, DeviceId::from_sha256(&[3; 32]));
        assert_eq!(peer.name, "desk");
        assert_eq!(peer.device_type, DeviceType::Server);
        assert_eq!(peer.addresses.len(), 1, "duplicates dropped");
    }

    /// mdns-sd hands over a host's IPv6 link-local addresses without their interface, often a
    /// moment after its IPv4 one: kept, they could not be dialled and would make every
    /// restart of a device look like two changes.
    #[test]
    fn link_local_ipv6_addresses_are_not_kept() {
        let mut a = good();
        a.addresses = vec![
            "fe80::2872:b2ff:feb8:dac6".parse().unwrap(),
            "10.77.0.3".parse().unwrap(),
            "fd00:77::3".parse().unwrap(),
        ];
        let peer = check(&a).unwrap();
        assert_eq!(
            peer.addresses,
            vec![
                "10.77.0.3".parse::<IpAddr>().unwrap(),
                "fd00:77::3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn spec_breaking_announcements_are_ignored_with_a_reason() {
        let mut wrong_id = good();
        wrong_id
            .txt
            .insert("id".into(), DeviceId::from_sha256(&[4; 32]).to_string());
        let mut no_v = good();
        no_v.txt.remove("v");
        let mut v2 = good();
        v2.txt.insert("v".into(), "2".into());
        let mut no_id = good();
        no_id.txt.remove("id");
        let mut long_name = good();
        long_name.txt.insert("name".into(), "x".repeat(64));
        let mut bad_instance = good();
        bad_instance.instance = "Printer".into();
        let mut port0 = good();
        port0.port = 0;
        for (case, why) in [
            (wrong_id, "does not match"),
            (no_v, "no `v`"),
            (v2, "speaks 1"),
            (no_id, "no `id`"),
            (long_name, "more than 63"),
            (bad_instance, "instance name"),
            (port0, "port is 0"),
        ] {
            let reason = check(&case).unwrap_err();
            assert!(reason.contains(why), "{reason} should mention {why}");
        }
    }

    #[test]
    fn unknown_types_show_as_unknown_and_addresses_are_bounded() {
        let mut a = good();
        a.txt.insert("type".into(), "watch".into());
        a.addresses = (0..100u8).map(|i| IpAddr::from([10, 77, 1, i])).collect();
        let peer = check(&a).unwrap();
        assert_eq!(peer.device_type, DeviceType::Unknown);
        assert_eq!(peer.addresses.len(), MAX_ADDRESSES);
    }
}
