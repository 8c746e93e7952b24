//! Facts about this host that bound a plan: the open-file limit, kernel sysctls, local
//! addresses. Reads only, apart from raising our own soft `RLIMIT_NOFILE`.

use std::net::IpAddr;

use crate::profile::sources::PortRange;

/// File descriptors kept aside for the runtime, output files and the coordinator link.
pub const FD_RESERVE: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE`.
pub fn fd_limit() -> std::io::Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FdLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the result.
pub fn raise_fd_limit() -> std::io::Result<FdLimit> {
    let current = fd_limit()?;
    if current.soft < current.hard {
        let wanted = libc::rlimit {
            rlim_cur: current.hard,
            rlim_max: current.hard,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    fd_limit()
}

/// Reads `/proc/sys/...` by its dotted sysctl name.
pub fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

pub fn sysctl_u64(name: &str) -> Option<u64> {
    sysctl(name).and_then(|s| s.parse().ok())
}

/// `net.ipv4.ip_local_port_range`, or Linux's default when it cannot be read.
pub fn ephemeral_port_range() -> PortRange {
    sysctl("net.ipv4.ip_local_port_range")
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(str::parse::<u16>);
            match (parts.next(), parts.next()) {
                (Some(Ok(first)), Some(Ok(last))) if first <= last && first > 0 => {
                    Some(PortRange { first, last })
                }
                _ => None,
            }
        })
        .unwrap_or(PortRange {
            first: 32768,
            last: 60999,
        })
}

/// Addresses configured on this host's interfaces, with the interface name.
pub fn local_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; we only read
    // entries whose pointers the kernel set.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cursor = head;
        while !cursor.is_null() {
            let entry = &*cursor;
            cursor = entry.ifa_next;
            if entry.ifa_addr.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(entry.ifa_name)
                .to_string_lossy()
                .into_owned();
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    out.push((name, IpAddr::V4(ip)));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    out.push((
                        name,
                        IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
                    ));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Whether a source address can be bound here: configured locally, or inside 127.0.0.0/8,
/// which Linux routes to loopback whole.
pub fn can_bind(ip: IpAddr, local: &[(String, IpAddr)]) -> bool {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => true,
        // Not on an interface, but a local route may still cover it (`ip route add local
        // 10.0.4.0/24 dev lo`, as `stampede nlb --datapath kernel` sets up for its clients):
        // the kernel's answer to a bind is the one that counts. UDP, so no TCP port is taken.
        _ => {
            local.iter().any(|(_, a)| *a == ip)
                || std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_facts() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        let range = ephemeral_port_range();
        assert!(range.len() > 0);
        let local = local_addresses();
        assert!(local.iter().any(|(_, a)| a.is_loopback()));
        assert!(can_bind("127.3.4.5".parse().unwrap(), &local));
    }
}
