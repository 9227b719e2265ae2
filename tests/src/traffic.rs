//! Real TCP sockets made inside a test's namespaces, with the socket options the analysis scenarios need.
//!
//! A socket keeps the namespace it was created in, so the sockets returned here can be used from any thread.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, RawFd},
};

use anyhow::Context as _;

use crate::netns::Netns;

/// `setsockopt(fd, level, name, &value)` for an int option; the error names `what`.
fn set_int(fd: RawFd, level: i32, name: i32, value: i32, what: &str) -> io::Result<()> {
    // SAFETY: `value` is a valid int for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("setsockopt({what}): {e}")))
    }
}

/// `struct sockaddr_in` of an IPv4 socket address (IPv6 is not needed by the scenarios).
fn sockaddr_in(addr: SocketAddr) -> io::Result<libc::sockaddr_in> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 addresses only"));
    };
    Ok(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    })
}

/// A new IPv4 TCP socket, owned.
fn tcp_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket(2) has no preconditions; a non-negative result is a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("socket(AF_INET, SOCK_STREAM): {e}")));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `bind(2)` or `connect(2)` (`what` says which) of `fd` to `addr`.
fn to_addr(fd: RawFd, addr: SocketAddr, what: &str) -> io::Result<()> {
    let sa = sockaddr_in(addr)?;
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` is a valid sockaddr_in of `len` bytes for the duration of the call.
    let rc = unsafe {
        if what == "bind" {
            libc::bind(fd, (&raw const sa).cast(), len)
        } else {
            libc::connect(fd, (&raw const sa).cast(), len)
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}({addr}): {e}")))
    }
}

/// A listener on `addr` in `ns`; with `rcvbuf`, SO_RCVBUF is set before listen(2), so every accepted socket
/// inherits that small receive buffer (and the window it implies).
pub fn listen(ns: &Netns, addr: SocketAddr, rcvbuf: Option<i32>) -> anyhow::Result<TcpListener> {
    ns.enter(move || -> io::Result<TcpListener> {
        let fd = tcp_socket()?;
        set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
        if let Some(size) = rcvbuf {
            set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size, "SO_RCVBUF")?;
        }
        to_addr(fd.as_raw_fd(), addr, "bind")?;
        // SAFETY: listen(2) on a bound socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("listen({addr}): {e}")));
        }
        Ok(TcpListener::from(fd))
    })?
    .with_context(|| format!("listening on {addr} in {}", ns.name))
}

/// A connection from `ns` to `target`; with `local`, the socket is bound there first (SO_REUSEADDR), so a
/// test can open the same 4-tuple again once the previous connection is gone.
pub fn connect(ns: &Netns, local: Option<SocketAddr>, target: SocketAddr) -> anyhow::Result<TcpStream> {
    ns.enter(move || -> io::Result<TcpStream> {
        let fd = tcp_socket()?;
        if let Some(local) = local {
            set_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")?;
            to_addr(fd.as_raw_fd(), local, "bind")?;
        }
        to_addr(fd.as_raw_fd(), target, "connect")?;
        Ok(TcpStream::from(fd))
    })?
    .with_context(|| format!("connecting from {} to {target}", ns.name))
}

/// Turns keep-alives on: the first probe after `idle_secs` without traffic, then one every `interval_secs`.
pub fn keepalive(s: &TcpStream, idle_secs: i32, interval_secs: i32) -> io::Result<()> {
    let fd = s.as_raw_fd();
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "SO_KEEPALIVE")?;
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_secs, "TCP_KEEPIDLE")?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        interval_secs,
        "TCP_KEEPINTVL",
    )
}

/// SO_LINGER with a zero timeout: close(2) then sends an RST and leaves no TIME_WAIT behind.
pub fn linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("setsockopt(SO_LINGER): {e}")))
    }
}

/// Sends the one-byte zero window probe a BSD or Windows sender would (Linux's persist timer sends a zero-length
/// segment at `snd_una − 1` instead, which tshark calls a keep-alive): waits (bounded by `timeout`) on `iface` in
/// `ns` for an ACK from `from` that closes the window, then answers it with one byte at its ack number through an
/// AF_PACKET socket, so the frame passes TC egress and the packet tap like any other. The receiving kernel drops
/// the byte and answers with a zero window ACK, Wireshark's zero window probe ACK.
pub fn zero_window_probe(
    ns: &Netns,
    iface: &str,
    from: SocketAddr,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let ifname = std::ffi::CString::new(iface).context("interface name")?;
    ns.enter(move || probe_on(&ifname, from, timeout))?
}

fn probe_on(ifname: &std::ffi::CStr, from: SocketAddr, timeout: std::time::Duration) -> anyhow::Result<()> {
    let SocketAddr::V4(from) = from else {
        anyhow::bail!("IPv4 only");
    };
    // SAFETY: plain socket calls on a descriptor this function owns (closed by OwnedFd); buffers outlive the calls.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    anyhow::ensure!(
        ifindex != 0,
        "if_nametoindex({ifname:?}): {}",
        io::Error::last_os_error()
    );
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    ll.sll_ifindex = ifindex as i32;
    let ll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `ll` is a valid sockaddr_ll of `ll_len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const ll).cast(), ll_len) } != 0 {
        return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval for the call.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some(frame) = probe_for(&buf[..n], from) {
            // SAFETY: `frame` and `ll` are valid for the call.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const ll).cast(),
                    ll_len,
                )
            };
            anyhow::ensure!(
                sent == frame.len() as isize,
                "sendto(AF_PACKET): {}",
                io::Error::last_os_error()
            );
            return Ok(());
        }
    }
    anyhow::bail!("no zero window ACK from {from} within {timeout:?}")
}

/// The Internet checksum of `parts` concatenated (each part of even length but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// For an Ethernet/IPv4/TCP frame from `from` with ACK set and a zero window, the probe answering it: one byte
/// at its ack number, acknowledging its seq, with the timestamps echoed.
fn probe_for(frame: &[u8], from: std::net::SocketAddrV4) -> Option<Vec<u8>> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tcp = ip.get(ihl..)?;
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    let (src, sport) = (&ip[12..16], u16::from_be_bytes([tcp[0], tcp[1]]));
    let window = u16::from_be_bytes([*tcp.get(14)?, *tcp.get(15)?]);
    if src != from.ip().octets() || sport != from.port() || tcp[13] & 0x10 == 0 || window != 0 {
        return None;
    }
    let (seq, ack) = (&tcp[4..8], &tcp[8..12]);
    // The timestamps option of the ACK, echoed: our TSval is the peer's last TSecr, our TSecr its TSval.
    let (mut tsval, mut tsecr) = ([0u8; 4], [0u8; 4]);
    let mut opts = tcp.get(20..doff)?;
    while let [kind, rest @ ..] = opts {
        match kind {
            0 => break,
            1 => opts = rest,
            8 if rest.len() >= 9 => {
                tsecr.copy_from_slice(&rest[1..5]);
                tsval.copy_from_slice(&rest[5..9]);
                break;
            }
            _ => opts = rest.get(usize::from(*rest.first()?).checked_sub(1)?..)?,
        }
    }
    let mut tcp_out = Vec::with_capacity(33);
    tcp_out.extend_from_slice(&tcp[2..4]); // our source port is its destination port
    tcp_out.extend_from_slice(&tcp[0..2]);
    tcp_out.extend_from_slice(ack);
    tcp_out.extend_from_slice(seq);
    tcp_out.extend_from_slice(&[8 << 4, 0x10, 0x01, 0xf6, 0, 0, 0, 0]);
    tcp_out.extend_from_slice(&[1, 1, 8, 10]);
    tcp_out.extend_from_slice(&tsval);
    tcp_out.extend_from_slice(&tsecr);
    tcp_out.push(b'p');
    let (saddr, daddr) = (&ip[16..20], &ip[12..16]);
    let len = tcp_out.len() as u16;
    let pseudo = [saddr, daddr, &[0, 6], &len.to_be_bytes()].concat();
    let sum = checksum(&[&pseudo, &tcp_out]);
    tcp_out[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip_out = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip_out[2..4].copy_from_slice(&(20 + len).to_be_bytes());
    ip_out.extend_from_slice(saddr);
    ip_out.extend_from_slice(daddr);
    let sum = checksum(&[&ip_out]);
    ip_out[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut out = Vec::with_capacity(14 + ip_out.len() + tcp_out.len());
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&ip_out);
    out.extend_from_slice(&tcp_out);
    Some(out)
}
