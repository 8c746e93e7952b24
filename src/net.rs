//! Client sockets built with socket2, shared by the agents and the NLB emulator: no port
//! reserved at `bind`, an optional per-socket port range, and a non-blocking connect handed to
//! tokio.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpSocket;

use crate::profile::sources::PortRange;

/// `IP_LOCAL_PORT_RANGE` (Linux 6.3); not in the libc crate.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

fn set_int_option(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    // SAFETY: the fd is open for the lifetime of `socket`, and the option value is a u32 whose
    // size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets the kernel choose the source port at `connect()` by 4-tuple instead of at `bind()`,
/// so each destination gets its own port space.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    set_int_option(socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

fn set_local_port_range(socket: &Socket, range: PortRange) -> io::Result<()> {
    let value = u32::from(range.first) | (u32::from(range.last) << 16);
    set_int_option(socket, libc::IPPROTO_IP, IP_LOCAL_PORT_RANGE, value)
}

/// Starts a non-blocking connect from `source` (if any) to `target` and hands the socket to
/// tokio. The connection may still be in progress: wait for writability, then check
/// `take_error`. Errors the kernel knows at once (no port left, no such address) come back here.
pub fn start_connect(
    source: Option<IpAddr>,
    target: SocketAddr,
    port_range: Option<PortRange>,
) -> io::Result<tokio::net::TcpStream> {
    let socket = bound_socket(source, target, port_range)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    tokio::net::TcpStream::from_std(socket.into())
}

/// Like `start_connect`, for a caller that polls the socket itself (the connection table):
/// the socket is returned as a plain fd, registered with nothing.
pub fn start_connect_fd(
    source: Option<IpAddr>,
    target: SocketAddr,
    port_range: Option<PortRange>,
) -> io::Result<std::os::fd::OwnedFd> {
    let socket = bound_socket(source, target, port_range)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// A non-blocking client socket bound to `source` (if any), ready for `connect`.
pub fn client_socket(
    source: Option<IpAddr>,
    target: SocketAddr,
    port_range: Option<PortRange>,
) -> io::Result<TcpSocket> {
    Ok(TcpSocket::from_std_stream(
        bound_socket(source, target, port_range)?.into(),
    ))
}

fn bound_socket(
    source: Option<IpAddr>,
    target: SocketAddr,
    port_range: Option<PortRange>,
) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    // No SO_REUSEADDR (a port-0 bind with IP_BIND_ADDRESS_NO_PORT reserves nothing to reuse)
    // and no TCP_NODELAY (a heartbeat is sent only after the previous echo, which acks it, so
    // Nagle never holds one back): two syscalls fewer per connection.
    if let Some(range) = port_range {
        set_local_port_range(&socket, range)?;
    }
    if let Some(ip) = source {
        if ip.is_ipv4() {
            set_bind_address_no_port(&socket)?;
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(socket)
}

/// Makes the next close of `fd` abortive (RST instead of FIN): `SO_LINGER` on, zero seconds.
/// The caller guarantees `fd` is an open socket it is about to close.
pub fn set_linger_zero(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is open (the caller's contract) and we pass a linger struct of its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Checks once, before a run, that this kernel takes `IP_LOCAL_PORT_RANGE`.
pub fn probe_port_range_support(range: PortRange) -> Result<(), String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)
        .map_err(|e| format!("cannot create a probe socket: {e}"))?;
    set_local_port_range(&socket, range).map_err(|e| {
        format!(
            "this kernel refuses IP_LOCAL_PORT_RANGE ({e}); sources.port_range needs Linux 6.3 or newer, remove it or upgrade"
        )
    })
}
