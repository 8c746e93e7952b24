//! Source-address specs: single addresses, CIDRs and ranges, expanded to a list of IPs.
//!
//! Pure parsing; the pool that hands addresses to sockets lives in `agent::pool`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The most addresses one profile may expand to; more is almost surely a typo (a /8).
pub const MAX_SOURCE_ADDRS: usize = 65_536;

/// Expands `"127.0.0.2"`, `"127.0.1.0/24"` or `"127.0.2.1-127.0.2.50"` into addresses.
///
/// A CIDR shorter than /31 (IPv4) or /127 (IPv6) leaves out its network and broadcast
/// addresses, as an interface would.
pub fn expand(spec: &str) -> Result<Vec<IpAddr>, String> {
    let spec = spec.trim();
    if let Some((base, prefix)) = spec.split_once('/') {
        let base: IpAddr = base
            .parse()
            .map_err(|_| format!("{base:?} is not an IP address"))?;
        let prefix: u32 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        return match base {
            IpAddr::V4(v4) => expand_v4_cidr(v4, prefix),
            IpAddr::V6(v6) => expand_v6_cidr(v6, prefix),
        };
    }
    if let Some((first, last)) = spec.split_once('-') {
        let first: IpAddr = first
            .trim()
            .parse()
            .map_err(|_| format!("{first:?} is not an IP address"))?;
        let last: IpAddr = last
            .trim()
            .parse()
            .map_err(|_| format!("{last:?} is not an IP address"))?;
        return expand_range(first, last);
    }
    spec.parse::<IpAddr>()
        .map(|ip| vec![ip])
        .map_err(|_| format!("{spec:?} is not an IP address, CIDR or range"))
}

fn expand_v4_cidr(base: Ipv4Addr, prefix: u32) -> Result<Vec<IpAddr>, String> {
    if prefix > 32 {
        return Err(format!("prefix /{prefix} is longer than 32 bits"));
    }
    let size = 1u64 << (32 - prefix);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let network = u32::from(base) & mask;
    let (skip_first, skip_last) = if size > 2 { (1, 1) } else { (0, 0) };
    let count = size - skip_first - skip_last;
    check_size(count)?;
    Ok((0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::from(network + (skip_first + i) as u32)))
        .collect())
}

fn expand_v6_cidr(base: Ipv6Addr, prefix: u32) -> Result<Vec<IpAddr>, String> {
    if prefix > 128 {
        return Err(format!("prefix /{prefix} is longer than 128 bits"));
    }
    if prefix < 112 {
        return Err(format!(
            "/{prefix} holds more than {MAX_SOURCE_ADDRS} addresses; use /112 or longer"
        ));
    }
    let size = 1u128 << (128 - prefix);
    let network = u128::from(base) & (u128::MAX << (128 - prefix));
    Ok((0..size)
        .map(|i| IpAddr::V6(Ipv6Addr::from(network + i)))
        .collect())
}

fn expand_range(first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, String> {
    match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a {
                return Err("the range ends before it starts".into());
            }
            check_size(u64::from(b - a) + 1)?;
            Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let (a, b) = (u128::from(a), u128::from(b));
            if b < a {
                return Err("the range ends before it starts".into());
            }
            if b - a >= MAX_SOURCE_ADDRS as u128 {
                return Err(format!(
                    "the range holds more than {MAX_SOURCE_ADDRS} addresses"
                ));
            }
            Ok((a..=b).map(|n| IpAddr::V6(Ipv6Addr::from(n))).collect())
        }
        _ => Err("a range must start and end in the same address family".into()),
    }
}

fn check_size(count: u64) -> Result<(), String> {
    if count > MAX_SOURCE_ADDRS as u64 {
        Err(format!(
            "expands to {count} addresses, more than the {MAX_SOURCE_ADDRS} allowed"
        ))
    } else {
        Ok(())
    }
}

/// A per-socket local port range, inclusive, as set with `IP_LOCAL_PORT_RANGE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| "expected FIRST-LAST, e.g. \"40000-40499\"".to_string())?;
        let first: u16 = first
            .trim()
            .parse()
            .map_err(|_| format!("{first:?} is not a port number (1-65535)"))?;
        let last: u16 = last
            .trim()
            .parse()
            .map_err(|_| format!("{last:?} is not a port number (1-65535)"))?;
        if first == 0 || last < first {
            return Err("expected 1 <= FIRST <= LAST <= 65535".into());
        }
        Ok(PortRange { first, last })
    }

    /// Number of ports in the range (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        u64::from(self.last - self.first) + 1
    }

    /// The part of `self` the kernel will use, given the system-wide ephemeral range.
    pub fn within(&self, system: PortRange) -> Option<PortRange> {
        let first = self.first.max(system.first);
        let last = self.last.min(system.last);
        (first <= last).then_some(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_specs() {
        assert_eq!(expand("127.0.0.2").unwrap().len(), 1);
        let cidr = expand("127.0.1.0/24").unwrap();
        assert_eq!(cidr.len(), 254);
        assert_eq!(cidr[0].to_string(), "127.0.1.1");
        assert_eq!(expand("127.0.1.4/31").unwrap().len(), 2);
        assert_eq!(expand("127.0.2.1-127.0.2.50").unwrap().len(), 50);
        assert_eq!(expand("::1").unwrap().len(), 1);
        assert_eq!(expand("fd00::/126").unwrap().len(), 4);
    }

    #[test]
    fn refuses_bad_specs() {
        assert!(expand("127.0.0.300").is_err());
        assert!(expand("10.0.0.0/8").is_err());
        assert!(expand("127.0.0.9-127.0.0.1").is_err());
        assert!(expand("127.0.0.1-::1").is_err());
        assert!(expand("127.0.0.1/33").is_err());
    }

    #[test]
    fn port_ranges() {
        let range = PortRange::parse("40000-40499").unwrap();
        assert_eq!(range.len(), 500);
        let system = PortRange::parse("32768-60999").unwrap();
        assert_eq!(range.within(system), Some(range));
        assert_eq!(PortRange::parse("1000-2000").unwrap().within(system), None);
        assert!(PortRange::parse("5-1").is_err());
        assert!(PortRange::parse("0-10").is_err());
        assert!(PortRange::parse("abc").is_err());
    }
}
