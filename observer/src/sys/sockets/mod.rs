//! The kernel's TCP sockets: one model filled from sock_diag netlink, /proc/net/tcp{,6} or BPF, plus the
//! processes that own them and the TcpExt counters that explain a listener's drops.

pub mod diag;
pub mod process;
pub mod procfs;
pub mod tcpext;

use std::net::{IpAddr, SocketAddr};

/// A TCP state as the kernel numbers it (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum TcpState {
    /// TCP_ESTABLISHED.
    Established = 1,
    /// TCP_SYN_SENT.
    SynSent = 2,
    /// TCP_SYN_RECV (a full socket before the final ACK, or a half-open request sock in a dump).
    SynRecv = 3,
    /// TCP_FIN_WAIT1.
    FinWait1 = 4,
    /// TCP_FIN_WAIT2.
    FinWait2 = 5,
    /// TCP_TIME_WAIT.
    TimeWait = 6,
    /// TCP_CLOSE.
    Close = 7,
    /// TCP_CLOSE_WAIT.
    CloseWait = 8,
    /// TCP_LAST_ACK.
    LastAck = 9,
    /// TCP_LISTEN.
    Listen = 10,
    /// TCP_CLOSING.
    Closing = 11,
    /// TCP_NEW_SYN_RECV: a request sock (shown as SYN_RECV by every tool).
    NewSynRecv = 12,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with this kernel number.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        TcpState::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The kernel number.
    pub fn kernel(self) -> u8 {
        self as u8
    }

    /// The name netstat and /proc users know (`SYN_RECV` for request socks too).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// The name `ss` prints.
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// Request socks and SYN_RECV sockets both count as SYN_RECV for users.
    pub fn normalized(self) -> TcpState {
        match self {
            TcpState::NewSynRecv => TcpState::SynRecv,
            s => s,
        }
    }
}

/// Which kernel timer runs on a socket (the `tr` column of /proc/net/tcp, `idiag_timer` of sock_diag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// No timer pending.
    #[default]
    Off,
    /// Retransmission (also SYN-ACK retransmission of a request sock).
    Retransmit,
    /// Keep-alive.
    KeepAlive,
    /// TIME_WAIT expiry.
    TimeWait,
    /// Zero-window probe.
    Probe,
    /// A value this code does not know.
    Other(u8),
}

impl TimerKind {
    /// The timer with this /proc or sock_diag number.
    pub fn from_kernel(n: u8) -> TimerKind {
        match n {
            0 => TimerKind::Off,
            1 => TimerKind::Retransmit,
            2 => TimerKind::KeepAlive,
            3 => TimerKind::TimeWait,
            4 => TimerKind::Probe,
            n => TimerKind::Other(n),
        }
    }
}

/// A socket's timer: which one, when it fires, how often it fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Timer {
    /// Which timer.
    pub kind: TimerKind,
    /// Milliseconds until it fires (0 when off).
    pub expires_ms: u64,
    /// Retransmissions so far (`retrnsmt`, `idiag_retrans`).
    pub retransmits: u32,
    /// Unanswered zero-window or keep-alive probes (the `timeout` column of /proc/net/tcp).
    pub probes: u32,
}

/// What tcp_info (`INET_DIAG_INFO`) tells about a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TcpInfo {
    /// Window scale shift this side applies to the peer's windows (`tcpi_snd_wscale`), when scaling is on.
    pub snd_wscale: Option<u8>,
    /// Window scale shift the peer applies to ours (`tcpi_rcv_wscale`), when scaling is on.
    pub rcv_wscale: Option<u8>,
    /// SACK was negotiated.
    pub sack: bool,
    /// Timestamps were negotiated.
    pub timestamps: bool,
    /// Smoothed RTT in microseconds.
    pub rtt_us: u32,
    /// RTT variance in microseconds.
    pub rttvar_us: u32,
    /// Segments retransmitted and not yet acknowledged.
    pub retrans: u32,
    /// Total retransmitted segments.
    pub total_retrans: u32,
    /// Send MSS.
    pub snd_mss: u32,
    /// Receive MSS estimate.
    pub rcv_mss: u32,
}

/// One TCP socket of the kernel's table: a full socket, a request sock (SYN_RECV) or a TIME_WAIT sock.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Socket {
    /// Local address and port (IPv4 sockets have V4 addresses, tcp6 sockets V6 ones, mapped or not).
    pub local: SocketAddr,
    /// Remote address and port (unspecified and 0 for a listener).
    pub remote: SocketAddr,
    /// The state.
    pub state: TcpState,
    /// Recv-Q as netstat shows it: bytes not yet read, or a listener's accept queue length.
    pub recv_q: u32,
    /// Send-Q as netstat shows it: bytes not yet acknowledged, 0 for a listener.
    pub send_q: u32,
    /// A listener's accept queue limit (`sk_max_ack_backlog`); known from sock_diag and BPF, not from /proc.
    pub backlog_limit: Option<u32>,
    /// The pending timer.
    pub timer: Timer,
    /// Owner uid (for a request sock, the listener's).
    pub uid: u32,
    /// Socket inode (0 for request and TIME_WAIT socks and orphans).
    pub inode: u64,
    /// The kernel's socket cookie, when the source gives it.
    pub cookie: Option<u64>,
    /// tcp_info, when it was asked for and the kernel gave it.
    pub info: Option<TcpInfo>,
    /// Segments the kernel dropped on this socket (`sk_drops`; for a listener, its share of ListenDrops), when
    /// the source gives it.
    #[serde(default)]
    pub drops: Option<u32>,
}

impl Socket {
    /// A socket with these endpoints and state, empty queues, no timer, owner or extras.
    pub fn new(local: SocketAddr, remote: SocketAddr, state: TcpState) -> Socket {
        Socket {
            local,
            remote,
            state,
            recv_q: 0,
            send_q: 0,
            backlog_limit: None,
            timer: Timer::default(),
            uid: 0,
            inode: 0,
            cookie: None,
            info: None,
            drops: None,
        }
    }

    /// True for a tcp6 socket (netstat's `tcp6`, /proc/net/tcp6).
    pub fn is_v6(&self) -> bool {
        self.local.is_ipv6()
    }

    /// The connection's key: local then remote endpoint.
    pub fn key(&self) -> (SocketAddr, SocketAddr) {
        (self.local, self.remote)
    }

    /// True when this listener accepts a segment sent to `dst` (same port; same address or a wildcard, an
    /// IPv6 wildcard also taking IPv4 unless it is v6only, which this model does not know and assumes not).
    pub fn listens_for(&self, dst: SocketAddr) -> bool {
        if self.state != TcpState::Listen || self.local.port() != dst.port() {
            return false;
        }
        let dst_ip = canonical(dst.ip());
        match self.local.ip() {
            IpAddr::V4(a) if a.is_unspecified() => dst_ip.is_ipv4(),
            IpAddr::V6(a) if a.is_unspecified() => true,
            ip => canonical(ip) == dst_ip,
        }
    }
}

/// The listener among `listeners` that takes segments for `local` (an exact address beats a wildcard, as in the
/// kernel's lookup).
pub fn listener_for(listeners: &[Socket], local: SocketAddr) -> Option<usize> {
    listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.listens_for(local))
        .max_by_key(|(_, l)| !l.local.ip().is_unspecified())
        .map(|(i, _)| i)
}

/// An IPv4-mapped IPv6 address as IPv4, anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why reading the socket table failed.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// A syscall on the netlink socket failed.
    #[error("sock_diag netlink: {syscall} failed: {source}")]
    Netlink {
        /// The syscall (socket, bind, sendto, recvfrom).
        syscall: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The kernel answered with an error or a message this code cannot read.
    #[error("sock_diag netlink: {0}")]
    Protocol(String),
    /// A file under /proc could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line of a /proc file did not parse.
    #[error("{path} line {line}: {reason}")]
    Parse {
        /// The path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_kernel_numbers() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(s.kernel()), Some(s));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
    }

    #[test]
    fn listener_matching_follows_wildcards_and_mapped_addresses() {
        let sock = |local: &str| Socket::new(local.parse().unwrap(), "0.0.0.0:0".parse().unwrap(), TcpState::Listen);
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(sock("0.0.0.0:80").listens_for(dst));
        assert!(sock("[::]:80").listens_for(dst));
        assert!(sock("10.0.0.1:80").listens_for(dst));
        assert!(sock("[::ffff:10.0.0.1]:80").listens_for(dst));
        assert!(!sock("10.0.0.2:80").listens_for(dst));
        assert!(!sock("0.0.0.0:81").listens_for(dst));
        assert!(!sock("0.0.0.0:80").listens_for("[fe80::1]:80".parse().unwrap()));
    }
}
