//! NETLINK_SOCK_DIAG client for TCP over IPv4 and IPv6: full-table dumps, per-port dumps filtered in the kernel,
//! and exact lookups of one connection.
//!
//! The messages are read in place from one reused receive buffer; the only allocation per socket is the
//! [`Socket`] handed to the caller. Layouts follow `include/uapi/linux/inet_diag.h` and `netlink.h`.
//!
//! What the kernel reports differs from /proc in two places: a request sock (SYN_RECV) has uid 0, not its
//! listener's, and a TIME_WAIT sock reports the state it closed from (`FIN_WAIT2` for an orphan waiting on
//! `tcp_fin_timeout`), as `ss` shows it.

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{Socket, SocketError, TcpInfo, TcpState, Timer, TimerKind, canonical};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
/// Most local ports one dump filters on in the kernel; a query for more ports is not filtered by port.
pub const MAX_FILTER_PORTS: usize = 64;
/// The bytecode of one port: two comparisons of 8 bytes each (op and operand).
const PORT_BLOCK_LEN: usize = 16;
/// The longest request this client sends: an `INET_DIAG_REQ_BYTECODE` attribute for the most ports.
const MAX_REQUEST: usize = NLMSG_HDR_LEN + REQ_LEN + 4 + PORT_BLOCK_LEN * MAX_FILTER_PORTS;

const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_INFO: u16 = 2;
/// `INET_DIAG_SKMEMINFO`: the socket's `SK_MEMINFO_*` u32 array.
const INET_DIAG_SKMEMINFO: u16 = 7;
/// Index of `SK_MEMINFO_DROPS` (`sk_drops`) in that array.
const SK_MEMINFO_DROPS: usize = 8;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
const INET_DIAG_NOCOOKIE: u32 = !0;

const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// `struct tcp_info` up to and including `tcpi_total_retrans`, the last field read here.
const TCP_INFO_MIN: usize = 104;

/// The user-space receive buffer. A dump datagram is at most about 32 KiB (the kernel caps its dump skbs there);
/// the margin keeps a future kernel's larger batches from being cut.
const RECV_BUF: usize = 256 * 1024;

/// The `idiag_states` bit of one state.
pub fn state_bit(state: TcpState) -> u32 {
    1 << state.kernel()
}

/// Every TCP state, request socks (TCP_NEW_SYN_RECV) included.
pub const ALL_STATES: u32 = 0x1ffe;

/// Which address families a query covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Families {
    /// IPv4 sockets only (`tcp`).
    V4,
    /// IPv6 sockets only (`tcp6`, v4-mapped ones included).
    V6,
    /// Both, IPv4 first.
    #[default]
    Both,
}

impl Families {
    fn kernel(self) -> &'static [u8] {
        const V4: u8 = libc::AF_INET as u8;
        const V6: u8 = libc::AF_INET6 as u8;
        match self {
            Families::V4 => &[V4],
            Families::V6 => &[V6],
            Families::Both => &[V4, V6],
        }
    }
}

/// What a dump asks the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    /// `idiag_states`: a bit per state ([`state_bit`], [`ALL_STATES`]).
    pub states: u32,
    /// Ask for tcp_info (`INET_DIAG_INFO`); TIME_WAIT and request socks never carry it.
    pub info: bool,
    /// Ask for the socket's memory counters (`INET_DIAG_SKMEMINFO`), for its drop count.
    pub meminfo: bool,
    /// Only sockets with one of these local ports, filtered in the kernel.
    pub local_ports: Option<Ports>,
    /// Which families.
    pub families: Families,
}

impl Query {
    /// Every socket of both families, without tcp_info.
    pub fn all() -> Self {
        Query {
            states: ALL_STATES,
            info: false,
            meminfo: false,
            local_ports: None,
            families: Families::Both,
        }
    }

    /// Listening sockets of both families, with their drop counts.
    pub fn listeners() -> Self {
        Query {
            states: state_bit(TcpState::Listen),
            meminfo: true,
            ..Query::all()
        }
    }

    /// Half-open connections (request socks and SYN_RECV sockets) on local port `port`.
    pub fn syn_recv(port: u16) -> Self {
        Query {
            states: state_bit(TcpState::SynRecv) | state_bit(TcpState::NewSynRecv),
            local_ports: Ports::of(&[port]),
            ..Query::all()
        }
    }

    /// Sockets in any of `states`, both families.
    pub fn in_states(states: &[TcpState]) -> Self {
        Query {
            states: states.iter().fold(0, |bits, &s| bits | state_bit(s)),
            ..Query::all()
        }
    }

    /// The same query with tcp_info.
    pub fn with_info(self) -> Self {
        Query { info: true, ..self }
    }

    /// The same query restricted to local port `port`.
    pub fn on_port(self, port: u16) -> Self {
        self.on_ports(&[port])
    }

    /// The same query restricted to these local ports; not restricted when there are none or more than
    /// [`MAX_FILTER_PORTS`] (the caller still sorts what comes back by port).
    pub fn on_ports(self, ports: &[u16]) -> Self {
        Query {
            local_ports: Ports::of(ports),
            ..self
        }
    }

    /// The same query restricted to `families`.
    pub fn of(self, families: Families) -> Self {
        Query { families, ..self }
    }
}

/// A set of local ports for the kernel to filter on: distinct, ascending, at most [`MAX_FILTER_PORTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    ports: [u16; MAX_FILTER_PORTS],
    len: usize,
}

impl Ports {
    /// The set of `ports`; `None` when there are none or too many.
    pub fn of(ports: &[u16]) -> Option<Ports> {
        let mut set = Ports {
            ports: [0; MAX_FILTER_PORTS],
            len: 0,
        };
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() || sorted.len() > MAX_FILTER_PORTS {
            return None;
        }
        set.ports[..sorted.len()].copy_from_slice(&sorted);
        set.len = sorted.len();
        Some(set)
    }

    /// The ports, ascending.
    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..self.len]
    }
}

/// One `SOCK_DIAG_BY_FAMILY` request for TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    family: u8,
    dump: bool,
    info: bool,
    meminfo: bool,
    states: u32,
    local: (u16, [u8; 16]),
    remote: (u16, [u8; 16]),
    ifindex: u32,
    cookie: [u32; 2],
    local_ports: Option<Ports>,
}

impl Request {
    fn dump(family: u8, q: &Query) -> Self {
        Request {
            family,
            dump: true,
            info: q.info,
            meminfo: q.meminfo,
            states: q.states,
            local: (0, [0; 16]),
            remote: (0, [0; 16]),
            ifindex: 0,
            cookie: [0; 2],
            local_ports: q.local_ports,
        }
    }

    fn lookup(local: SocketAddr, remote: SocketAddr, info: bool) -> Self {
        let v6 = local.is_ipv6() || remote.is_ipv6();
        let raw = |a: SocketAddr| -> [u8; 16] {
            match (a.ip(), v6) {
                (IpAddr::V4(ip), false) => {
                    let mut b = [0; 16];
                    b[..4].copy_from_slice(&ip.octets());
                    b
                }
                (IpAddr::V4(ip), true) => ip.to_ipv6_mapped().octets(),
                (IpAddr::V6(ip), _) => ip.octets(),
            }
        };
        let ifindex = match local {
            SocketAddr::V6(a) => a.scope_id(),
            SocketAddr::V4(_) => 0,
        };
        Request {
            family: if v6 { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 },
            dump: false,
            info,
            meminfo: false,
            states: ALL_STATES,
            local: (local.port(), raw(local)),
            remote: (remote.port(), raw(remote)),
            ifindex,
            cookie: [INET_DIAG_NOCOOKIE; 2],
            local_ports: None,
        }
    }

    /// Writes the netlink message into `out` and returns its length.
    fn encode(&self, seq: u32, out: &mut [u8; MAX_REQUEST]) -> usize {
        let filter_len = self.local_ports.map_or(0, |p| 4 + PORT_BLOCK_LEN * p.as_slice().len());
        let len = NLMSG_HDR_LEN + REQ_LEN + filter_len;
        let flags = NLM_F_REQUEST | if self.dump { NLM_F_DUMP } else { 0 };
        out.fill(0);
        out[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        out[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out[6..8].copy_from_slice(&flags.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        let r = &mut out[NLMSG_HDR_LEN..];
        r[0] = self.family;
        r[1] = libc::IPPROTO_TCP as u8;
        r[2] = if self.info { 1 << (INET_DIAG_INFO - 1) } else { 0 }
            | if self.meminfo {
                1 << (INET_DIAG_SKMEMINFO - 1)
            } else {
                0
            };
        r[4..8].copy_from_slice(&self.states.to_ne_bytes());
        r[8..10].copy_from_slice(&self.local.0.to_be_bytes());
        r[10..12].copy_from_slice(&self.remote.0.to_be_bytes());
        r[12..28].copy_from_slice(&self.local.1);
        r[28..44].copy_from_slice(&self.remote.1);
        r[44..48].copy_from_slice(&self.ifindex.to_ne_bytes());
        r[48..52].copy_from_slice(&self.cookie[0].to_ne_bytes());
        r[52..56].copy_from_slice(&self.cookie[1].to_ne_bytes());
        if let Some(ports) = &self.local_ports {
            let a = &mut r[REQ_LEN..];
            a[0..2].copy_from_slice(&(filter_len as u16).to_ne_bytes());
            a[2..4].copy_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            encode_port_filter(&mut a[4..filter_len], ports.as_slice());
        }
        len
    }
}

/// The bytecode accepting a socket whose local port is one of `ports` (ascending): a block of two comparisons
/// per port. The kernel runs it by jumping `yes` bytes on a true comparison and `no` bytes on a false one, and
/// accepts the socket when a jump lands exactly on the end (a jump 4 bytes past it rejects). A `yes` jump holds
/// only a byte, so a match found early leaves through a `no` jump: for every port but the last, `sport >= p`
/// then `sport >= p + 1`, whose falsehood means `sport == p`. The last block is ss's own `sport >= p && sport
/// <= p` (ascending order puts port 65535, which has no `p + 1`, there).
fn encode_port_filter(out: &mut [u8], ports: &[u16]) {
    let end = out.len();
    for (i, &port) in ports.iter().enumerate() {
        let at = i * PORT_BLOCK_LEN;
        let op = &mut out[at..at + PORT_BLOCK_LEN];
        let last = i + 1 == ports.len();
        // `sport < p`: on to the next port's block, or past the end after the last.
        encode_op(&mut op[0..4], INET_DIAG_BC_S_GE, 8, if last { 20 } else { 16 });
        encode_op(&mut op[4..8], 0, 0, port);
        if last {
            encode_op(&mut op[8..12], INET_DIAG_BC_S_LE, 8, 12);
            encode_op(&mut op[12..16], 0, 0, port);
        } else {
            let to_end = (end - at - 8) as u16;
            encode_op(&mut op[8..12], INET_DIAG_BC_S_GE, 8, to_end);
            encode_op(&mut op[12..16], 0, 0, port + 1);
        }
    }
}

/// `struct inet_diag_bc_op`.
fn encode_op(out: &mut [u8], code: u8, yes: u8, no: u16) {
    out[0] = code;
    out[1] = yes;
    out[2..4].copy_from_slice(&no.to_ne_bytes());
}

/// How a datagram of a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// More datagrams follow (a dump without its NLMSG_DONE yet).
    More,
    /// NLMSG_DONE, or the single answer of a lookup.
    Done,
    /// NLMSG_ERROR with this (positive) errno.
    Errno(i32),
}

fn protocol(what: impl std::fmt::Display) -> SocketError {
    SocketError::Protocol(what.to_string())
}

/// The errno of a kernel's negative error code.
fn errno(code: i32) -> i32 {
    code.checked_neg().unwrap_or(i32::MAX)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Reads one datagram of the answer to request `seq`, handing every socket to `f`.
fn parse_datagram(buf: &[u8], seq: u32, dump: bool, f: &mut impl FnMut(Socket)) -> Result<Status, SocketError> {
    let mut off = 0;
    let mut answered = false;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < NLMSG_HDR_LEN {
            return Err(protocol(format_args!("truncated netlink header: {} bytes", rest.len())));
        }
        let len = u32_at(rest, 0) as usize;
        let kind = u16_at(rest, 4);
        if len < NLMSG_HDR_LEN || len > rest.len() {
            return Err(protocol(format_args!(
                "netlink message length {len} with {} bytes left",
                rest.len()
            )));
        }
        let msg_seq = u32_at(rest, 8);
        if msg_seq != seq {
            return Err(protocol(format_args!(
                "answer to request {msg_seq} while waiting for {seq}"
            )));
        }
        let payload = &rest[NLMSG_HDR_LEN..len];
        match kind {
            SOCK_DIAG_BY_FAMILY => {
                f(parse_socket(payload)?);
                answered = true;
            }
            NLMSG_DONE => {
                // A dump that failed in the kernel ends with a negative errno here.
                let code = if payload.len() >= 4 {
                    u32_at(payload, 0) as i32
                } else {
                    0
                };
                return Ok(if code < 0 {
                    Status::Errno(errno(code))
                } else {
                    Status::Done
                });
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    return Err(protocol("truncated NLMSG_ERROR"));
                }
                let code = u32_at(payload, 0) as i32;
                if code != 0 {
                    return Ok(Status::Errno(errno(code)));
                }
            }
            NLMSG_NOOP => {}
            other => return Err(protocol(format_args!("unexpected netlink message type {other}"))),
        }
        off += align4(len).min(rest.len());
    }
    Ok(if answered && !dump { Status::Done } else { Status::More })
}

/// Reads one `inet_diag_msg` and its attributes.
fn parse_socket(p: &[u8]) -> Result<Socket, SocketError> {
    if p.len() < MSG_LEN {
        return Err(protocol(format_args!(
            "inet_diag_msg of {} bytes, expected {MSG_LEN}",
            p.len()
        )));
    }
    let state = match p[1] {
        12 => TcpState::SynRecv,
        n => TcpState::from_kernel(n).ok_or_else(|| protocol(format_args!("unknown TCP state {n}")))?,
    };
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let (local, remote) = match i32::from(p[0]) {
        libc::AF_INET => (v4(&p[8..12], sport), v4(&p[24..28], dport)),
        libc::AF_INET6 => (v6(&p[8..24], sport), v6(&p[24..40], dport)),
        other => return Err(protocol(format_args!("unexpected address family {other}"))),
    };
    let cookie = u64::from(u32_at(p, 44)) | u64::from(u32_at(p, 48)) << 32;
    let (rqueue, wqueue) = (u32_at(p, 56), u32_at(p, 60));
    let (recv_q, send_q, backlog_limit) = if state == TcpState::Listen {
        (rqueue, 0, Some(wqueue))
    } else {
        (rqueue, wqueue, None)
    };
    let kind = TimerKind::from_kernel(p[2]);
    // For the probe and keep-alive timers the kernel reports unanswered probes in idiag_retrans.
    let (retransmits, probes) = match kind {
        TimerKind::Probe | TimerKind::KeepAlive => (0, u32::from(p[3])),
        _ => (u32::from(p[3]), 0),
    };
    let mut timer = Timer {
        kind,
        expires_ms: u64::from(u32_at(p, 52)),
        retransmits,
        probes,
    };
    let mut info = None;
    let mut drops = None;
    let mut attrs = &p[MSG_LEN..];
    while !attrs.is_empty() {
        if attrs.len() < 4 {
            return Err(protocol(format_args!(
                "truncated attribute header: {} bytes",
                attrs.len()
            )));
        }
        let len = usize::from(u16_at(attrs, 0));
        if len < 4 || len > attrs.len() {
            return Err(protocol(format_args!(
                "attribute length {len} with {} bytes left",
                attrs.len()
            )));
        }
        if u16_at(attrs, 2) & NLA_TYPE_MASK == INET_DIAG_SKMEMINFO && len >= 4 + 4 * (SK_MEMINFO_DROPS + 1) {
            drops = Some(u32_at(attrs, 4 + 4 * SK_MEMINFO_DROPS));
        }
        if u16_at(attrs, 2) & NLA_TYPE_MASK == INET_DIAG_INFO {
            let (tcp_info, counters) = parse_tcp_info(&attrs[4..len])?;
            // tcp_info has both counters as /proc shows them, whatever timer runs.
            (timer.retransmits, timer.probes) = counters;
            info = Some(tcp_info);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Ok(Socket {
        local,
        remote,
        state,
        recv_q,
        send_q,
        backlog_limit,
        timer,
        uid: u32_at(p, 64),
        inode: u64::from(u32_at(p, 68)),
        cookie: Some(cookie),
        info,
        drops,
    })
}

fn v4(b: &[u8], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), port)
}

fn v6(b: &[u8], port: u16) -> SocketAddr {
    let mut octets = [0; 16];
    octets.copy_from_slice(b);
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
}

/// Reads `struct tcp_info`; also returns (`tcpi_retransmits`, `tcpi_probes`).
fn parse_tcp_info(b: &[u8]) -> Result<(TcpInfo, (u32, u32)), SocketError> {
    if b.len() < TCP_INFO_MIN {
        return Err(protocol(format_args!(
            "tcp_info of {} bytes, expected at least {TCP_INFO_MIN}",
            b.len()
        )));
    }
    let options = b[5];
    // `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4` share byte 6; bit-field order follows the byte order.
    let (snd, rcv) = if cfg!(target_endian = "little") {
        (b[6] & 0xf, b[6] >> 4)
    } else {
        (b[6] >> 4, b[6] & 0xf)
    };
    let wscale = options & TCPI_OPT_WSCALE != 0;
    let info = TcpInfo {
        snd_wscale: wscale.then_some(snd),
        rcv_wscale: wscale.then_some(rcv),
        sack: options & TCPI_OPT_SACK != 0,
        timestamps: options & TCPI_OPT_TIMESTAMPS != 0,
        rtt_us: u32_at(b, 68),
        rttvar_us: u32_at(b, 72),
        retrans: u32_at(b, 36),
        total_retrans: u32_at(b, 100),
        snd_mss: u32_at(b, 16),
        rcv_mss: u32_at(b, 20),
    };
    Ok((info, (u32::from(b[2]), u32::from(b[3]))))
}

/// A NETLINK_SOCK_DIAG socket of the network namespace of the thread that opened it, reused for every request.
pub struct Diag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// A request whose answer was not read to its end (an error or a panic in the middle): the socket is
    /// replaced before the next request, since the kernel refuses a new dump while one is running.
    unfinished: bool,
}

impl std::fmt::Debug for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Diag")
            .field("fd", &self.fd)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

fn open_socket() -> Result<OwnedFd, SocketError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(SocketError::Netlink {
            syscall: "socket",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Diag {
    /// Opens the netlink socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self, SocketError> {
        Ok(Diag {
            fd: open_socket()?,
            buf: vec![0; RECV_BUF],
            seq: 0,
            unfinished: false,
        })
    }

    /// Every socket matching `q`.
    pub fn dump(&mut self, q: &Query) -> Result<Vec<Socket>, SocketError> {
        let mut out = Vec::new();
        self.dump_with(q, |s| out.push(s))?;
        Ok(out)
    }

    /// Hands every socket matching `q` to `f`, as the datagrams arrive.
    pub fn dump_with(&mut self, q: &Query, mut f: impl FnMut(Socket)) -> Result<(), SocketError> {
        for &family in q.families.kernel() {
            let req = Request::dump(family, q);
            if let Some(errno) = self.exchange(&req, &mut f)? {
                let family = if i32::from(family) == libc::AF_INET {
                    "AF_INET"
                } else {
                    "AF_INET6"
                };
                return Err(kernel_error(&format!("TCP dump of {family}"), errno));
            }
        }
        Ok(())
    }

    /// The socket with exactly this local and remote endpoint (a listener: remote `0.0.0.0:0` or `[::]:0`),
    /// request and TIME_WAIT socks included; `None` when there is none. An IPv4 endpoint also finds a tcp6
    /// socket with the v4-mapped address, and the other way round.
    pub fn lookup(&mut self, local: SocketAddr, remote: SocketAddr, info: bool) -> Result<Option<Socket>, SocketError> {
        let mut found = None;
        let req = Request::lookup(local, remote, info);
        match self.exchange(&req, &mut |s| found = Some(s))? {
            None => {}
            Some(libc::ENOENT) => return Ok(None),
            Some(errno) => return Err(kernel_error(&format!("lookup of {local} -> {remote}"), errno)),
        }
        // The kernel falls back to a listener on the local port when no connection matches: keep only an
        // exact match.
        let same = |a: SocketAddr, b: SocketAddr| a.port() == b.port() && canonical(a.ip()) == canonical(b.ip());
        Ok(found.filter(|s| same(s.local, local) && same(s.remote, remote)))
    }

    /// Sends `req` and reads its whole answer; `Some(errno)` when the kernel refused it.
    fn exchange(&mut self, req: &Request, f: &mut impl FnMut(Socket)) -> Result<Option<i32>, SocketError> {
        if self.unfinished {
            self.fd = open_socket()?;
            self.unfinished = false;
        }
        self.seq = self.seq.wrapping_add(1);
        let mut msg = [0; MAX_REQUEST];
        let len = req.encode(self.seq, &mut msg);
        self.unfinished = true;
        self.send(&msg[..len])?;
        loop {
            let n = self.recv()?;
            match parse_datagram(&self.buf[..n], self.seq, req.dump, f)? {
                Status::More => continue,
                Status::Done => break,
                Status::Errno(errno) => {
                    // A dump's error message ends its answer; a lookup's is its whole answer.
                    self.unfinished = false;
                    return Ok(Some(errno));
                }
            }
        }
        self.unfinished = false;
        Ok(None)
    }

    fn send(&self, msg: &[u8]) -> Result<(), SocketError> {
        // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: msg and kernel are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const kernel).cast(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(SocketError::Netlink {
                    syscall: "sendto",
                    source: err,
                });
            }
        }
    }

    /// Receives one datagram into the buffer and returns its length.
    fn recv(&mut self) -> Result<usize, SocketError> {
        loop {
            // SAFETY: buf is valid for its length; MSG_TRUNC makes the kernel return the full datagram length.
            let rc = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SocketError::Netlink {
                    syscall: "recvfrom",
                    source: err,
                });
            }
            let n = rc as usize;
            if n > self.buf.len() {
                return Err(protocol(format_args!(
                    "datagram of {n} bytes cut to {}",
                    self.buf.len()
                )));
            }
            if n == 0 {
                return Err(protocol("empty datagram"));
            }
            return Ok(n);
        }
    }
}

fn kernel_error(what: &str, errno: i32) -> SocketError {
    protocol(format_args!(
        "{what}: kernel answered {}",
        io::Error::from_raw_os_error(errno)
    ))
}

#[cfg(test)]
#[path = "testdata/diag_ss.rs"]
mod diag_ss;

#[cfg(test)]
mod tests {
    use super::*;

    const INET: &[u8] = include_bytes!("testdata/diag_dump_inet.bin");
    const INET6: &[u8] = include_bytes!("testdata/diag_dump_inet6.bin");
    const SS_TEXT: &str = include_str!("testdata/diag_dump.ss.txt");
    /// The sequence number ss uses.
    const SS_SEQ: u32 = 123_456;

    fn parse_all(buf: &[u8], seq: u32, dump: bool) -> Result<(Status, Vec<Socket>), SocketError> {
        let mut out = Vec::new();
        let status = parse_datagram(buf, seq, dump, &mut |s| out.push(s))?;
        Ok((status, out))
    }

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR_LEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    /// An IPv4 `inet_diag_msg` for 10.0.0.1:80 -> 10.0.0.2:40000.
    fn diag_msg(state: u8, timer: u8, retrans: u8, rqueue: u32, wqueue: u32) -> Vec<u8> {
        let mut p = vec![0; MSG_LEN];
        p[0] = libc::AF_INET as u8;
        p[1] = state;
        p[2] = timer;
        p[3] = retrans;
        p[4..6].copy_from_slice(&80u16.to_be_bytes());
        p[6..8].copy_from_slice(&40000u16.to_be_bytes());
        p[8..12].copy_from_slice(&[10, 0, 0, 1]);
        p[24..28].copy_from_slice(&[10, 0, 0, 2]);
        p[44..48].copy_from_slice(&0x89ab_cdefu32.to_ne_bytes());
        p[48..52].copy_from_slice(&0x0123_4567u32.to_ne_bytes());
        p[52..56].copy_from_slice(&1500u32.to_ne_bytes());
        p[56..60].copy_from_slice(&rqueue.to_ne_bytes());
        p[60..64].copy_from_slice(&wqueue.to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        p
    }

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(align4(a.len()), 0);
        a
    }

    fn one(payload: &[u8]) -> Result<Socket, SocketError> {
        let (_, mut socks) = parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, payload), 1, true)?;
        Ok(socks.remove(0))
    }

    #[test]
    fn port_filter_request_is_byte_for_byte_what_ss_sends() {
        // ss -tan 'sport >= :6000 and sport <= :6000', AF_INET, captured by diag_capture.py.
        let req = Request {
            states: 0xfff,
            ..Request::dump(libc::AF_INET as u8, &Query::all().on_port(6000))
        };
        let mut out = [0; MAX_REQUEST];
        let len = req.encode(SS_SEQ, &mut out);
        assert_eq!(&out[..len], include_bytes!("testdata/diag_req_sport.bin"));
    }

    /// The kernel's `inet_diag_bc_run` for the port comparisons: whether `program` accepts local port `sport`.
    fn kernel_accepts(program: &[u8], sport: u16) -> bool {
        let (mut at, mut len) = (0usize, program.len() as i64);
        while len > 0 {
            let op = &program[at..];
            let operand = u16::from_ne_bytes([op[6], op[7]]);
            let yes = match op[0] {
                INET_DIAG_BC_S_GE => sport >= operand,
                INET_DIAG_BC_S_LE => sport <= operand,
                code => panic!("op {code}"),
            };
            let jump = if yes {
                usize::from(op[1])
            } else {
                usize::from(u16::from_ne_bytes([op[2], op[3]]))
            };
            at += jump;
            len -= jump as i64;
        }
        len == 0
    }

    #[test]
    fn the_port_filter_accepts_exactly_its_ports() {
        for ports in [
            vec![80],
            vec![22, 80],
            vec![1, 2, 3],
            vec![443, 65535],
            vec![0, 65535],
            (1..=MAX_FILTER_PORTS as u16).map(|p| p * 1000).collect(),
        ] {
            let set = Ports::of(&ports).expect("a port set");
            let mut program = vec![0; PORT_BLOCK_LEN * set.as_slice().len()];
            encode_port_filter(&mut program, set.as_slice());
            for sport in (0..=u16::MAX).filter(|p| p % 997 == 0 || ports.iter().any(|q| p.abs_diff(*q) <= 1)) {
                assert_eq!(
                    kernel_accepts(&program, sport),
                    ports.contains(&sport),
                    "{ports:?} {sport}"
                );
            }
        }
        assert_eq!(Ports::of(&[]), None);
        assert_eq!(Ports::of(&[7; 3]).map(|p| p.as_slice().to_vec()), Some(vec![7]));
        let too_many: Vec<u16> = (1..=MAX_FILTER_PORTS as u16 + 1).collect();
        assert_eq!(Query::all().on_ports(&too_many).local_ports, None);
    }

    #[test]
    fn lookup_request_fills_the_socket_id_without_dump_flag() {
        let req = Request::lookup("10.0.0.1:80".parse().unwrap(), "10.0.0.2:40000".parse().unwrap(), true);
        let mut out = [0; MAX_REQUEST];
        let len = req.encode(7, &mut out);
        let mut want = vec![72, 0, 0, 0, 20, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[2, 6, 2, 0]);
        want.extend_from_slice(&ALL_STATES.to_ne_bytes());
        want.extend_from_slice(&[0, 80, 0x9c, 0x40]);
        want.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&[0xff; 8]);
        assert_eq!(&out[..len], &want[..]);

        // A mixed pair asks AF_INET6 with the IPv4 side v4-mapped.
        let req = Request::lookup(
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
            "10.0.0.2:40000".parse().unwrap(),
            false,
        );
        let len = req.encode(8, &mut out);
        assert_eq!(len, 72);
        assert_eq!(&out[16..20], &[10, 6, 0, 0]);
        assert_eq!(&out[28..44], &Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets());
        assert_eq!(&out[44..60], &Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets());
    }

    #[test]
    fn query_states_cover_request_socks() {
        assert_eq!(Query::all().states, (1..=12).fold(0, |b, n| b | 1 << n));
        assert_ne!(Query::syn_recv(80).states & 1 << 12, 0);
        assert_eq!(
            Query::syn_recv(80).local_ports.map(|p| p.as_slice().to_vec()),
            Some(vec![80])
        );
        assert_eq!(Query::listeners().states, 1 << 10);
        assert_eq!(
            Query::in_states(&[TcpState::TimeWait, TcpState::Established]).states,
            1 << 6 | 1 << 1
        );
    }

    #[test]
    fn captured_dump_reads_as_ss_printed_it() {
        let (status, mut socks) = parse_all(INET, SS_SEQ, true).unwrap();
        assert_eq!(status, Status::Done);
        let (status, v6) = parse_all(INET6, SS_SEQ, true).unwrap();
        assert_eq!(status, Status::Done);
        socks.extend(v6);
        let rows = diag_ss::parse(SS_TEXT);
        let diffs = diag_ss::compare(&socks, &rows, true);
        assert!(diffs.is_empty(), "{diffs:#?}");

        // The fixture holds what the comparison is meant to cover.
        let has = |f: &dyn Fn(&Socket) -> bool| socks.iter().any(f);
        assert!(has(&|s| s.state == TcpState::Listen
            && s.recv_q == 2
            && s.backlog_limit == Some(7)
            && s.send_q == 0));
        assert!(has(&|s| s.state == TcpState::SynRecv
            && s.timer.kind == TimerKind::Retransmit
            && s.inode == 0));
        assert!(has(&|s| s.state == TcpState::TimeWait
            && s.timer.kind == TimerKind::TimeWait
            && s.info.is_none()));
        assert!(has(&|s| s.timer.kind == TimerKind::KeepAlive));
        assert!(has(&|s| s.info.is_some_and(|i| i.snd_wscale != i.rcv_wscale)));
        assert!(has(&|s| s.state == TcpState::Established && s.recv_q == 100));
        assert!(has(
            &|s| matches!(s.local.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped().is_some())
        ));
        assert!(has(&|s| s.local.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(
            socks
                .iter()
                .filter(|s| s.state != TcpState::Listen)
                .all(|s| s.backlog_limit.is_none())
        );
        assert!(socks.iter().all(|s| s.is_v6() == s.remote.is_ipv6()));
    }

    #[test]
    fn listener_queues_follow_netstat() {
        let s = one(&diag_msg(10, 0, 0, 3, 128)).unwrap();
        assert_eq!((s.recv_q, s.send_q, s.backlog_limit), (3, 0, Some(128)));
        let s = one(&diag_msg(1, 1, 2, 10, 20)).unwrap();
        assert_eq!((s.recv_q, s.send_q, s.backlog_limit), (10, 20, None));
        assert_eq!(s.local, "10.0.0.1:80".parse().unwrap());
        assert_eq!(s.remote, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(s.cookie, Some(0x0123_4567_89ab_cdef));
        assert_eq!((s.uid, s.inode), (1000, 4242));
        assert_eq!(
            s.timer,
            Timer {
                kind: TimerKind::Retransmit,
                expires_ms: 1500,
                retransmits: 2,
                probes: 0
            }
        );
    }

    #[test]
    fn request_sock_state_reads_as_syn_recv() {
        assert_eq!(one(&diag_msg(12, 1, 0, 0, 0)).unwrap().state, TcpState::SynRecv);
        assert_eq!(one(&diag_msg(3, 1, 0, 0, 0)).unwrap().state, TcpState::SynRecv);
    }

    #[test]
    fn probe_timers_count_probes_not_retransmits() {
        for timer in [2, 4] {
            let t = one(&diag_msg(1, timer, 3, 0, 0)).unwrap().timer;
            assert_eq!((t.retransmits, t.probes), (0, 3));
        }
    }

    #[test]
    fn tcp_info_fields_and_wscale_bits() {
        let mut info = vec![0u8; 232];
        info[2] = 4; // tcpi_retransmits
        info[3] = 1; // tcpi_probes
        info[5] = TCPI_OPT_WSCALE | TCPI_OPT_SACK;
        info[6] = if cfg!(target_endian = "little") { 0x97 } else { 0x79 }; // snd 7, rcv 9
        for (at, v) in [(16, 1448u32), (20, 536), (36, 2), (68, 1234), (72, 567), (100, 9)] {
            info[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        let mut p = diag_msg(1, 0, 0, 0, 0);
        p.extend(attr(8, &[0])); // INET_DIAG_SHUTDOWN, skipped
        p.extend(attr(INET_DIAG_INFO, &info));
        let s = one(&p).unwrap();
        let want = TcpInfo {
            snd_wscale: Some(7),
            rcv_wscale: Some(9),
            sack: true,
            timestamps: false,
            rtt_us: 1234,
            rttvar_us: 567,
            retrans: 2,
            total_retrans: 9,
            snd_mss: 1448,
            rcv_mss: 536,
        };
        assert_eq!(s.info, Some(want));
        assert_eq!((s.timer.retransmits, s.timer.probes), (4, 1));

        info[5] = TCPI_OPT_TIMESTAMPS;
        let mut p = diag_msg(1, 0, 0, 0, 0);
        p.extend(attr(INET_DIAG_INFO, &info));
        let i = one(&p).unwrap().info.unwrap();
        assert_eq!(
            (i.snd_wscale, i.rcv_wscale, i.timestamps, i.sack),
            (None, None, true, false)
        );
    }

    #[test]
    fn kernel_errors_and_ends() {
        let errno = |e: i32| nlmsg(NLMSG_ERROR, 5, &[&(-e).to_ne_bytes()[..], &[0; 16]].concat());
        assert_eq!(
            parse_all(&errno(libc::ENOENT), 5, false).unwrap().0,
            Status::Errno(libc::ENOENT)
        );
        let done_err = nlmsg(NLMSG_DONE, 5, &(-libc::EINVAL).to_ne_bytes());
        assert_eq!(parse_all(&done_err, 5, true).unwrap().0, Status::Errno(libc::EINVAL));
        let done = nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes());
        assert_eq!(parse_all(&done, 5, true).unwrap().0, Status::Done);
        // An acknowledgement (error 0) neither ends nor fails a dump.
        assert_eq!(parse_all(&errno(0), 5, true).unwrap().0, Status::More);
        // A lookup's single answer ends it; a dump goes on until NLMSG_DONE.
        let msg = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &diag_msg(1, 0, 0, 0, 0));
        assert_eq!(parse_all(&msg, 5, false).unwrap().0, Status::Done);
        assert_eq!(parse_all(&msg, 5, true).unwrap().0, Status::More);
        let text = kernel_error("lookup", libc::ENOENT).to_string();
        assert!(text.contains("No such file or directory"), "{text}");
    }

    #[test]
    fn odd_messages_are_errors() {
        let good = diag_msg(1, 0, 0, 0, 0);
        let bad = |buf: &[u8], seq: u32| parse_all(buf, seq, true).map(|_| ()).unwrap_err().to_string();
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &good)[..12], 1).contains("truncated netlink header"));
        let mut long = nlmsg(SOCK_DIAG_BY_FAMILY, 1, &good);
        long[0] += 4;
        assert!(bad(&long, 1).contains("length"));
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 2, &good), 1).contains("waiting for 1"));
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &good[..71]), 1).contains("inet_diag_msg of 71 bytes"));
        assert!(bad(&nlmsg(99, 1, &[]), 1).contains("type 99"));
        let mut fam = good.clone();
        fam[0] = 1;
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &fam), 1).contains("family 1"));
        let mut state = good.clone();
        state[1] = 13;
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &state), 1).contains("state 13"));
        let mut short_attr = good.clone();
        short_attr.extend_from_slice(&[12, 0, 2, 0, 0, 0, 0, 0]);
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &short_attr), 1).contains("attribute length 12"));
        let mut short_info = good.clone();
        short_info.extend(attr(INET_DIAG_INFO, &[0; 100]));
        assert!(bad(&nlmsg(SOCK_DIAG_BY_FAMILY, 1, &short_info), 1).contains("tcp_info of 100 bytes"));
    }

    #[test]
    fn cut_or_damaged_captures_never_panic() {
        for len in 0..INET.len() {
            let _ = parse_all(&INET[..len], SS_SEQ, true);
        }
        let mut buf = INET.to_vec();
        for i in 0..buf.len() {
            for flip in [0x01, 0x80, 0xff] {
                buf[i] ^= flip;
                let _ = parse_all(&buf, SS_SEQ, true);
                buf[i] ^= flip;
            }
        }
    }
}
