//! The trusted-devices projection file (the seed notes' "authorized devices cached to a
//! file"): written from the journal's state whenever trust changes, for operators to read and
//! back up. The journal stays the source of truth; edits to this file are not read back.

use std::fmt::Write;

use crate::control::PeerRow;

pub fn render<'a>(rows: impl Iterator<Item = &'a PeerRow>) -> String {
    let mut text = String::from(
        "# Devices this fsnode trusts. Written by fsnode from its journal whenever trust\n\
         # changes; edits here are not read back (use `fsnode trust add|remove`).\n",
    );
    for row in rows {
        let _ = write!(
            text,
            "\n[[device]]\nid = {:?}\nname = {:?}\ntype = {:?}\nverification-code = {:?}\n",
            row.id.as_str(),
            row.name,
            row.device_type.as_str(),
            row.verification_code
        );
        if !row.addresses.is_empty() {
            let _ = writeln!(
                text,
                "last-addresses = [{}]\nport = {}",
                row.addresses
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                row.port
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DeviceId, DeviceType};

    #[test]
    fn the_file_is_valid_toml_listing_each_device() {
        let row = PeerRow {
            id: DeviceId::from_sha256(&[1; 32]),
            name: "the \"lab\" box".into(),
            device_type: DeviceType::Server,
            addresses: vec!["10.77.0.2".into()],
            port: 4000,
            discovered: false,
            trusted: true,
            requested: false,
            connection: "not connected".into(),
            connection_state: Default::default(),
            transport: None,
            verification_code: "1234 5678".into(),
        };
        let text = render([row.clone()].iter());
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        let device = &parsed["device"][0];
        assert_eq!(device["id"].as_str(), Some(row.id.as_str()));
        assert_eq!(device["name"].as_str(), Some("the \"lab\" box"));
        assert_eq!(device["port"].as_integer(), Some(4000));
    }
}
