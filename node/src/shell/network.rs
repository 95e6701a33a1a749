//! Which local addresses the node serves on: those of the operator's `--interface`s, or every
//! address (the unspecified address) when none is named.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;

use crate::config::ConfigError;

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
            return Err(ConfigError::NoInterface(name.clone()).into());
        }
    }
    if addresses.is_empty() {
        return Err(ConfigError::NoAddress(interfaces.to_vec()).into());
    }
    Ok(addresses)
}

/// The addresses a browser can reach the node's page at: those it listens on, or, listening
/// on every interface, each interface's address except loopback and IPv6 link-local (which a
/// URL cannot carry without its interface).
pub fn page_addresses(listening: &[IpAddr]) -> Vec<IpAddr> {
    if !listening.iter().all(IpAddr::is_unspecified) {
        return listening.to_vec();
    }
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .iter()
        .map(if_addrs::Interface::ip)
        .filter(|ip| !ip.is_loopback() && !crate::core::discovery::is_unscoped_link_local(ip))
        .collect();
    // IPv4 first: what people type and phones reach most often.
    addresses.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addresses.dedup();
    addresses
}

/// The page's URL at `ip` and `port`.
pub fn page_url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_urls_bracket_ipv6() {
        assert_eq!(
            page_url("10.77.0.2".parse().unwrap(), 7452),
            "http://10.77.0.2:7452/"
        );
        assert_eq!(
            page_url("fd00:77::2".parse().unwrap(), 7452),
            "http://[fd00:77::2]:7452/"
        );
    }
}
