//! The TcpExt counters of /proc/net/netstat that explain a listener's drops, and the limits that size its
//! queues.
//!
//! Both are per network namespace and describe the calling thread's: the counters are read through
//! /proc/thread-self (see [`super::procfs`]), and a /proc/sys/net file shows the namespace of the thread
//! that opens it, so a thread that entered a namespace with setns(2) reads that namespace's values.

use std::collections::BTreeMap;

use super::SocketError;

/// The SNMP extension counters of the calling thread's network namespace.
pub const NETSTAT_PATH: &str = "/proc/thread-self/net/netstat";
/// SYN queue limit per listener.
pub const MAX_SYN_BACKLOG_PATH: &str = "/proc/sys/net/ipv4/tcp_max_syn_backlog";
/// Cap on the backlog argument of listen(2).
pub const SOMAXCONN_PATH: &str = "/proc/sys/net/core/somaxconn";
/// Syncookies mode.
pub const SYNCOOKIES_PATH: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// Whether a full accept queue answers the final ACK with a reset.
pub const ABORT_ON_OVERFLOW_PATH: &str = "/proc/sys/net/ipv4/tcp_abort_on_overflow";

/// TcpExt counters; the named ones are 0 when the kernel does not have them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcpExt {
    /// ListenOverflows: the accept queue was full (counted on the SYN and on the final ACK).
    pub listen_overflows: u64,
    /// ListenDrops: every drop at a listener, overflows included.
    pub listen_drops: u64,
    /// TCPReqQFullDrop: SYN dropped because the SYN queue was full and syncookies were off.
    pub req_q_full_drop: u64,
    /// TCPReqQFullDoCookies: the SYN queue was full and a syncookie was sent instead.
    pub req_q_full_do_cookies: u64,
    /// SyncookiesSent.
    pub syncookies_sent: u64,
    /// SyncookiesRecv: valid cookies received.
    pub syncookies_recv: u64,
    /// SyncookiesFailed: invalid cookies received.
    pub syncookies_failed: u64,
    /// Every TcpExt counter by its kernel name (`ListenOverflows`, `TCPTimeouts`, ...).
    pub all: BTreeMap<String, u64>,
}

impl TcpExt {
    fn from_map(all: BTreeMap<String, u64>) -> TcpExt {
        let get = |name: &str| all.get(name).copied().unwrap_or(0);
        TcpExt {
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            req_q_full_drop: get("TCPReqQFullDrop"),
            req_q_full_do_cookies: get("TCPReqQFullDoCookies"),
            syncookies_sent: get("SyncookiesSent"),
            syncookies_recv: get("SyncookiesRecv"),
            syncookies_failed: get("SyncookiesFailed"),
            all,
        }
    }

    /// The counter with this kernel name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.all.get(name).copied()
    }

    /// How much each counter rose since `earlier` (0 where it did not, or where it went back).
    pub fn since(&self, earlier: &TcpExt) -> TcpExt {
        let delta = self
            .all
            .iter()
            .map(|(name, &now)| (name.clone(), now.saturating_sub(earlier.get(name).unwrap_or(0))))
            .collect();
        TcpExt::from_map(delta)
    }
}

/// Reads the calling thread's namespace's TcpExt counters.
pub fn read() -> Result<TcpExt, SocketError> {
    let text = std::fs::read_to_string(NETSTAT_PATH).map_err(|source| SocketError::Read {
        path: NETSTAT_PATH.to_string(),
        source,
    })?;
    parse(&text, NETSTAT_PATH)
}

/// Parses /proc/net/netstat (`Prefix: names` lines, each followed by `Prefix: values`) and keeps TcpExt;
/// `path` names the file in errors.
pub fn parse(text: &str, path: &str) -> Result<TcpExt, SocketError> {
    let err = |line: usize, reason: String| SocketError::Parse {
        path: path.to_string(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    while let Some((header_index, header)) = lines.next() {
        let (prefix, names) = header
            .split_once(':')
            .ok_or_else(|| err(header_index + 1, "no `Prefix:` header".to_string()))?;
        let (index, values) = lines
            .next()
            .ok_or_else(|| err(header_index + 1, format!("{prefix} has no value line")))?;
        let line = index + 1;
        let values = values
            .strip_prefix(prefix)
            .and_then(|v| v.strip_prefix(':'))
            .ok_or_else(|| err(line, format!("expected the {prefix}: value line")))?;
        if prefix != "TcpExt" {
            continue;
        }
        let names: Vec<&str> = names.split_ascii_whitespace().collect();
        let values = values
            .split_ascii_whitespace()
            .map(|v| v.parse::<u64>().map_err(|_| err(line, format!("bad value {v:?}"))))
            .collect::<Result<Vec<u64>, _>>()?;
        if names.len() != values.len() {
            return Err(err(line, format!("{} names but {} values", names.len(), values.len())));
        }
        let all = names.into_iter().map(str::to_string).zip(values).collect();
        return Ok(TcpExt::from_map(all));
    }
    Err(err(text.lines().count(), "no TcpExt section".to_string()))
}

/// The sysctls that size a listener's queues, as the calling thread's network namespace has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// net.ipv4.tcp_max_syn_backlog: SYN queue (half-open request socks) limit per listener.
    pub tcp_max_syn_backlog: u32,
    /// net.core.somaxconn: listen(2) backlogs above it are lowered to it.
    pub somaxconn: u32,
    /// net.ipv4.tcp_syncookies: 0 off, 1 when the SYN queue overflows, 2 always.
    pub tcp_syncookies: u8,
    /// net.ipv4.tcp_abort_on_overflow: a full accept queue resets the connection instead of dropping the ACK.
    pub tcp_abort_on_overflow: bool,
}

/// Reads the listen limits of the calling thread's network namespace.
pub fn read_limits() -> Result<Limits, SocketError> {
    Ok(Limits {
        tcp_max_syn_backlog: sysctl(MAX_SYN_BACKLOG_PATH)?,
        somaxconn: sysctl(SOMAXCONN_PATH)?,
        tcp_syncookies: sysctl(SYNCOOKIES_PATH)?,
        tcp_abort_on_overflow: sysctl::<u8>(ABORT_ON_OVERFLOW_PATH)? != 0,
    })
}

fn sysctl<T: std::str::FromStr>(path: &str) -> Result<T, SocketError> {
    let text = std::fs::read_to_string(path).map_err(|source| SocketError::Read {
        path: path.to_string(),
        source,
    })?;
    text.trim().parse().map_err(|_| SocketError::Parse {
        path: path.to_string(),
        line: 1,
        reason: format!("bad value {:?}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/netstat of a namespace after a backlog-1 listener overflowed (testdata/capture_procfs.sh).
    const NETSTAT: &str = include_str!("testdata/proc_netstat.txt");
    /// `nstat -asz` run on exactly those bytes.
    const NSTAT: &str = include_str!("testdata/nstat.txt");

    #[test]
    fn every_counter_agrees_with_nstat() {
        let ext = parse(NETSTAT, "proc_netstat.txt").unwrap();
        let nstat: BTreeMap<String, u64> = NSTAT
            .lines()
            .filter_map(|l| {
                let mut cols = l.split_ascii_whitespace();
                let name = cols.next()?.strip_prefix("TcpExt")?;
                Some((name.to_string(), cols.next()?.parse().ok()?))
            })
            .collect();
        assert!(nstat.len() > 50, "nstat fixture lists {} TcpExt counters", nstat.len());
        assert_eq!(ext.all, nstat);
        let named = [
            ("ListenOverflows", ext.listen_overflows),
            ("ListenDrops", ext.listen_drops),
            ("TCPReqQFullDrop", ext.req_q_full_drop),
            ("TCPReqQFullDoCookies", ext.req_q_full_do_cookies),
            ("SyncookiesSent", ext.syncookies_sent),
            ("SyncookiesRecv", ext.syncookies_recv),
            ("SyncookiesFailed", ext.syncookies_failed),
        ];
        for (name, value) in named {
            assert_eq!(Some(value), nstat.get(name).copied(), "{name}");
        }
        assert!(ext.listen_overflows > 0, "the capture overflowed a listener");
    }

    #[test]
    fn since_is_the_rise_of_every_counter() {
        let now = parse(NETSTAT, "now").unwrap();
        let zero = TcpExt::from_map(now.all.keys().map(|k| (k.clone(), 0)).collect());
        assert_eq!(now.since(&zero), now);
        assert_eq!(now.since(&now).all.values().sum::<u64>(), 0);
        assert_eq!(zero.since(&now), zero, "counters that went back rose by 0");
        assert_eq!(
            now.since(&TcpExt::default()),
            now,
            "counters missing earlier count from 0"
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let cases = [
            ("TcpExt: A B\nTcpExt: 1\n", "line 2: 2 names but 1 values"),
            ("TcpExt: A B\nTcpExt: 1 x\n", "line 2: bad value \"x\""),
            ("TcpExt: A B\nIpExt: 1 2\n", "line 2: expected the TcpExt: value line"),
            ("TcpExt: A B\n", "line 1: TcpExt has no value line"),
            ("IpExt: A\nIpExt: 1\n", "line 2: no TcpExt section"),
            ("garbage\n", "line 1: no `Prefix:` header"),
        ];
        for (text, want) in cases {
            let msg = parse(text, "/proc/n").unwrap_err().to_string();
            assert_eq!(msg, format!("/proc/n {want}"));
        }
    }

    #[test]
    fn named_counters_missing_from_an_old_kernel_are_zero() {
        let ext = parse("IpExt: A\nIpExt: 5\nTcpExt: ListenDrops Other\nTcpExt: 3 4\n", "n").unwrap();
        assert_eq!(
            (ext.listen_drops, ext.listen_overflows, ext.get("Other")),
            (3, 0, Some(4))
        );
    }
}
