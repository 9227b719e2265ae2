//! `observer netstat` and `observer compare`: the kernel's TCP table printed exactly as `netstat -ant` and
//! `ss -tan` print it, and the row-by-row proof that the three agree.
//!
//! The table comes from sock_diag by default and from /proc/net/tcp{,6} with `--source proc` (also the fallback
//! when the netlink socket cannot be opened). [`netstat`] and [`ss`] hold each tool's formatting rules, read from
//! net-tools 2.10 `netstat.c`/`lib/inet6.c` and iproute2 6.1 `misc/ss.c`; [`compare`] parses the tools' output
//! and matches it against ours.

pub mod compare;
pub mod netstat;
pub mod ss;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
};

use crate::sys::sockets::{
    Socket, SocketError, TcpState,
    diag::{Diag, Query},
    procfs,
};

/// Which source a table was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// NETLINK_SOCK_DIAG.
    Diag,
    /// /proc/net/tcp and /proc/net/tcp6.
    Proc,
}

/// Where the table is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// sock_diag netlink (falls back to /proc when it cannot be opened).
    Diag,
    /// /proc/net/tcp and /proc/net/tcp6.
    Proc,
}

/// The socket table in the order netstat prints it, with where it came from.
#[derive(Clone, Debug)]
pub struct Table {
    /// IPv4 sockets first, then IPv6; within each family listeners first, otherwise in the source's order.
    pub sockets: Vec<Socket>,
    /// The source actually read.
    pub origin: Origin,
    /// The IPv6 wildcard listeners (by local port) that only take IPv6 (see [`Table::v6only`]).
    v6only_ports: HashSet<u16>,
}

impl Table {
    /// Reads the table from `source`; when sock_diag cannot be opened, notes it on stderr and reads /proc.
    pub fn read(source: Source) -> Result<Table, SocketError> {
        let from_proc = || -> Result<Vec<Socket>, SocketError> {
            Ok(procfs::read_table()?.into_iter().map(|row| row.socket).collect())
        };
        let (sockets, origin) = match source {
            Source::Proc => (from_proc()?, Origin::Proc),
            Source::Diag => match Diag::open() {
                Ok(mut diag) => (diag.dump(&Query::all())?, Origin::Diag),
                Err(e) => {
                    eprintln!("observer: note: {e}; reading /proc/net/tcp and tcp6 instead");
                    (from_proc()?, Origin::Proc)
                }
            },
        };
        Ok(Table::new(sockets, origin, bindv6only()))
    }

    /// Orders `sockets` as netstat lists them and works out which IPv6 wildcard sockets are v6only.
    pub fn new(mut sockets: Vec<Socket>, origin: Origin, bindv6only: bool) -> Table {
        sockets.sort_by_key(|s| (s.is_v6(), s.state != TcpState::Listen));
        let v4_ports: HashSet<u16> = sockets
            .iter()
            .filter(|s| !s.is_v6() && s.state == TcpState::Listen)
            .map(|s| s.local.port())
            .collect();
        let v6only_ports = sockets
            .iter()
            .filter(|s| s.is_v6() && s.local.ip().is_unspecified() && s.local.port() != 0)
            .map(|s| s.local.port())
            .filter(|port| bindv6only || v4_ports.contains(port))
            .collect();
        Table {
            sockets,
            origin,
            v6only_ports,
        }
    }

    /// Whether an IPv6 socket takes IPv6 only (`IPV6_V6ONLY`), which decides whether ss prints its wildcard
    /// as `*` or `[::]`. The socket model does not carry the flag, so it is inferred: the kernel sets it when a
    /// socket binds a specific non-mapped IPv6 address; a wildcard socket has it when `net.ipv6.bindv6only` is
    /// on or when an IPv4 listener holds the same port (a dual-stack wildcard could not share it). A wildcard
    /// socket that set the option itself with no IPv4 twin is misread as dual-stack.
    pub fn v6only(&self, s: &Socket) -> bool {
        match s.local.ip() {
            IpAddr::V4(_) => false,
            IpAddr::V6(ip) if ip.is_unspecified() => self.v6only_ports.contains(&s.local.port()),
            IpAddr::V6(ip) => ip.to_ipv4_mapped().is_none(),
        }
    }
}

/// `net.ipv6.bindv6only`: whether new IPv6 sockets default to v6only (off when unreadable).
fn bindv6only() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "1")
}

/// An address as glibc's `inet_ntop` writes it (RFC 5952 zero compression; IPv4-mapped and IPv4-compatible
/// addresses end in dotted quad), which both netstat and ss print.
pub fn ntop(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => ntop6(a),
    }
}

fn ntop6(a: Ipv6Addr) -> String {
    let words = a.segments();
    // The longest run of at least two zero words; the first one on a tie.
    let mut best: Option<(usize, usize)> = None;
    let mut run: Option<(usize, usize)> = None;
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            run = Some(run.map_or((i, 1), |(base, len)| (base, len + 1)));
        } else {
            run = None;
        }
        if let Some((base, len)) = run
            && len >= 2
            && best.is_none_or(|(_, best_len)| len > best_len)
        {
            best = Some((base, len));
        }
    }
    let mut out = String::with_capacity(39);
    let mut i = 0;
    while i < 8 {
        if let Some((base, len)) = best
            && i == base
        {
            out.push(':');
            if base + len == 8 {
                out.push(':');
            }
            i += len;
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6 && best.is_some_and(|(base, len)| base == 0 && (len == 6 || (len == 5 && words[5] == 0xffff))) {
            let o = a.octets();
            out.push_str(&format!("{}.{}.{}.{}", o[12], o[13], o[14], o[15]));
            break;
        }
        out.push_str(&format!("{:x}", words[i]));
        i += 1;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;

    /// A socket with the given endpoints, state and queues; the rest empty.
    pub(crate) fn sock(local: &str, remote: &str, state: TcpState, recv_q: u32, send_q: u32) -> Socket {
        Socket {
            recv_q,
            send_q,
            ..Socket::new(
                local.parse::<SocketAddr>().expect("local address"),
                remote.parse::<SocketAddr>().expect("remote address"),
                state,
            )
        }
    }

    /// The fixture table: `observer netstat --json` from sock_diag (testdata/capture.sh).
    pub(crate) fn fixture_table() -> Table {
        let sockets = include_str!("testdata/sockets.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a socket of sockets.jsonl"))
            .collect();
        Table::new(sockets, Origin::Diag, false)
    }

    #[test]
    fn ntop_writes_what_glibc_writes() {
        for line in include_str!("testdata/ntop.txt").lines() {
            let (hex, want) = line.split_once(' ').expect("hex and text");
            let bits = u128::from_str_radix(hex, 16).expect("32 hex digits");
            assert_eq!(ntop(IpAddr::V6(Ipv6Addr::from(bits))), want, "{hex}");
        }
    }

    #[test]
    fn listeners_come_first_and_v4_before_v6() {
        let table = Table::new(
            vec![
                sock("[::1]:40264", "[::1]:2223", TcpState::Established, 0, 0),
                sock("127.0.0.1:33784", "127.0.0.1:80", TcpState::Established, 0, 0),
                sock("[::]:2223", "[::]:0", TcpState::Listen, 0, 0),
                sock("127.0.0.1:80", "0.0.0.0:0", TcpState::Listen, 0, 0),
            ],
            Origin::Diag,
            false,
        );
        let order: Vec<String> = table.sockets.iter().map(|s| s.local.to_string()).collect();
        assert_eq!(order, ["127.0.0.1:80", "127.0.0.1:33784", "[::]:2223", "[::1]:40264"]);
    }

    #[test]
    fn v6only_follows_the_kernel_bind_rule_and_v4_twins() {
        let table = Table::new(
            vec![
                sock("0.0.0.0:22", "0.0.0.0:0", TcpState::Listen, 0, 0),
                sock("[::]:22", "[::]:0", TcpState::Listen, 0, 0),
                sock("[::]:2223", "[::]:0", TcpState::Listen, 0, 0),
                sock("[fd00::2]:8080", "[::]:0", TcpState::Listen, 0, 0),
                sock("[::ffff:10.99.0.1]:8082", "[::]:0", TcpState::Listen, 0, 0),
            ],
            Origin::Diag,
            false,
        );
        let flags: Vec<bool> = table.sockets.iter().map(|s| table.v6only(s)).collect();
        assert_eq!(flags, [false, true, false, true, false]);
        let all_v6only = Table::new(table.sockets.clone(), Origin::Diag, true);
        assert!(all_v6only.v6only(&all_v6only.sockets[2]));
    }
}
