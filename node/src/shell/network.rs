//! Which local addresses the node serves on: those of the operator's `--interface`s, or every
//! address (the unspecified address) when none is named.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail};

pub fn listen_addresses(interfaces: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    if interfaces.is_empty() {
        return Ok(vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    }
    let all = if_addrs::get_if_addrs().context("listing network interfaces")?;
    let mut addresses = Vec::new();
    for name in interfaces {
        let mut found = false;
        for interface in all.iter().filter(|i| &i.name == name) {
            found = true;
            let ip = interface.ip();
            // IPv6 link-local addresses need a scope id to be bound and dialled; the
            // interface's other addresses serve instead.
            if let IpAddr::V6(v6) = ip
                && v6.segments()[0] & 0xffc0 == 0xfe80
            {
                continue;
            }
            addresses.push(ip);
        }
        if !found {
            bail!("no network interface named {name:?} has an address; `ip addr` lists them");
        }
    }
    if addresses.is_empty() {
        bail!("the interfaces {interfaces:?} have no usable address");
    }
    Ok(addresses)
}
