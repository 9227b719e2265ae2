//! The test oracle for the sock_diag client: reads `ss -tanoei` output (iproute2 6.x) and names every field where
//! a [`Socket`] differs from what ss printed for it. Shared by the unit tests of `sockets::diag` (on captured
//! bytes and ss's output for them) and the kernel test `tests/tests/sockets_diag.rs` (live), through `#[path]`.
//! The including module must have `Socket` and `TimerKind` in scope.

use std::{collections::HashMap, net::SocketAddr};

use super::{Socket, TimerKind};

/// One row of `ss -tanoei` with its tcp_info line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SsRow {
    /// State as ss names it (`ESTAB`, `SYN-RECV`, ...).
    pub state: String,
    /// Recv-Q column.
    pub recv_q: u32,
    /// Send-Q column (a listener's backlog limit).
    pub send_q: u32,
    /// Local address.
    pub local: Option<SocketAddr>,
    /// Peer address (`*` reads as the unspecified address and port 0).
    pub peer: Option<SocketAddr>,
    /// `timer:(name,expires,retrans)`: name and retrans.
    pub timer: Option<(String, u32)>,
    /// `uid:`, printed only when not 0.
    pub uid: u32,
    /// `ino:`.
    pub inode: Option<u64>,
    /// `sk:`, the socket cookie in hex.
    pub cookie: Option<u64>,
    /// The info line has `ts`.
    pub ts: bool,
    /// The info line has `sack`.
    pub sack: bool,
    /// `wscale:snd,rcv`.
    pub wscale: Option<(u8, u8)>,
    /// `mss:`.
    pub mss: Option<u32>,
    /// `rcvmss:`.
    pub rcvmss: Option<u32>,
    /// `rtt:rtt/rttvar` in milliseconds.
    pub rtt_ms: Option<(f64, f64)>,
    /// The row had an info line with tcp_info in it.
    pub has_info: bool,
}

/// An address as ss prints it: `127.0.0.1:80`, `[::1]:80`, `*:80`, `0.0.0.0:*`, `10.0.0.1%eth0:80`.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (host, port) = s.rsplit_once(':')?;
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    let host = host.split('%').next()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = if host == "*" {
        "::".parse().ok()?
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

/// The rows of `ss -tanoei` (or `ss -tani` and the like) output.
pub fn parse(text: &str) -> Vec<SsRow> {
    let mut rows: Vec<SsRow> = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(row) = rows.last_mut() {
                parse_info(row, line);
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut row = SsRow {
            state: fields.next().unwrap_or_default().to_string(),
            recv_q: fields.next().and_then(|f| f.parse().ok()).unwrap_or(u32::MAX),
            send_q: fields.next().and_then(|f| f.parse().ok()).unwrap_or(u32::MAX),
            local: fields.next().and_then(parse_addr),
            peer: fields.next().and_then(parse_addr),
            ..SsRow::default()
        };
        for token in fields {
            if let Some(t) = token.strip_prefix("timer:(").and_then(|t| t.strip_suffix(')')) {
                let parts: Vec<&str> = t.split(',').collect();
                if let [name, _, retrans] = parts[..] {
                    row.timer = Some((name.to_string(), retrans.parse().unwrap_or(u32::MAX)));
                }
            } else if let Some(v) = token.strip_prefix("uid:") {
                row.uid = v.parse().unwrap_or(u32::MAX);
            } else if let Some(v) = token.strip_prefix("ino:") {
                row.inode = v.parse().ok();
            } else if let Some(v) = token.strip_prefix("sk:") {
                row.cookie = u64::from_str_radix(v, 16).ok();
            }
        }
        rows.push(row);
    }
    rows
}

fn parse_info(row: &mut SsRow, line: &str) {
    for token in line.split_whitespace() {
        row.has_info = true;
        match token {
            "ts" => row.ts = true,
            "sack" => row.sack = true,
            _ => {}
        }
        if let Some((a, b)) = token.strip_prefix("wscale:").and_then(|v| v.split_once(',')) {
            row.wscale = a.parse().ok().zip(b.parse().ok());
        } else if let Some(v) = token.strip_prefix("mss:") {
            row.mss = v.parse().ok();
        } else if let Some(v) = token.strip_prefix("rcvmss:") {
            row.rcvmss = v.parse().ok();
        } else if let Some((a, b)) = token.strip_prefix("rtt:").and_then(|v| v.split_once('/')) {
            row.rtt_ms = a.parse().ok().zip(b.parse().ok());
        }
    }
}

/// ss's name of a timer.
pub fn timer_name(kind: TimerKind) -> &'static str {
    match kind {
        TimerKind::Off => "off",
        TimerKind::Retransmit => "on",
        TimerKind::KeepAlive => "keepalive",
        TimerKind::TimeWait => "timewait",
        TimerKind::Probe => "persist",
        TimerKind::Other(_) => "unknown",
    }
}

/// What differs between `s` and the ss row for it. With `same_snapshot` (both read from the same bytes) also
/// the counters that move while a live table is read twice: timer retransmissions and RTT.
pub fn differences(s: &Socket, row: &SsRow, same_snapshot: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, ours: String, theirs: String| {
        if ours != theirs {
            out.push(format!("{} -> {}: {what}: ours {ours}, ss {theirs}", s.local, s.remote));
        }
    };
    check("state", s.state.ss_name().to_string(), row.state.clone());
    check("local", format!("{:?}", Some(s.local)), format!("{:?}", row.local));
    check("peer", format!("{:?}", Some(s.remote)), format!("{:?}", row.peer));
    check("recv_q", s.recv_q.to_string(), row.recv_q.to_string());
    let send_q = s.backlog_limit.unwrap_or(s.send_q);
    check(
        "send_q (listener: backlog limit)",
        send_q.to_string(),
        row.send_q.to_string(),
    );
    check("uid", s.uid.to_string(), row.uid.to_string());
    check("inode", format!("{:?}", Some(s.inode)), format!("{:?}", row.inode));
    check("cookie", format!("{:?}", s.cookie), format!("{:?}", row.cookie));
    // ss prints idiag_retrans, which holds the unanswered probes for the probe and keep-alive timers.
    let retrans = match s.timer.kind {
        TimerKind::Probe | TimerKind::KeepAlive => s.timer.probes,
        _ => s.timer.retransmits,
    };
    let theirs = row
        .timer
        .clone()
        .map(|(name, r)| if same_snapshot { (name, r) } else { (name, 0) });
    let ours = (s.timer.kind != TimerKind::Off).then(|| {
        (
            timer_name(s.timer.kind).to_string(),
            if same_snapshot { retrans } else { 0 },
        )
    });
    check("timer", format!("{ours:?}"), format!("{theirs:?}"));
    let info = s.info.unwrap_or_default();
    check(
        "tcp_info present",
        s.info.is_some().to_string(),
        row.has_info.to_string(),
    );
    check("ts", info.timestamps.to_string(), row.ts.to_string());
    check("sack", info.sack.to_string(), row.sack.to_string());
    check(
        "wscale",
        format!("{:?}", info.snd_wscale.zip(info.rcv_wscale)),
        format!("{:?}", row.wscale),
    );
    // ss leaves out a zero mss.
    check("mss", info.snd_mss.to_string(), row.mss.unwrap_or(0).to_string());
    check("rcvmss", info.rcv_mss.to_string(), row.rcvmss.unwrap_or(0).to_string());
    if same_snapshot {
        // ss prints microseconds / 1000 with %g: six significant digits.
        let near = |us: u32, ms: f64| ((f64::from(us) / 1000.0) - ms).abs() <= ms.abs() * 1e-5 + 1e-9;
        let rtt_ok = match row.rtt_ms {
            Some((rtt, var)) => near(info.rtt_us, rtt) && near(info.rttvar_us, var),
            None => info.rtt_us == 0,
        };
        check("rtt", rtt_ok.to_string(), "true".to_string());
    }
    out
}

/// Every difference between a dump and ss's rows for the same table, matched by local and peer address.
pub fn compare(ours: &[Socket], rows: &[SsRow], same_snapshot: bool) -> Vec<String> {
    let mut out = Vec::new();
    let by_key: HashMap<(SocketAddr, SocketAddr), &Socket> = ours.iter().map(|s| (s.key(), s)).collect();
    if by_key.len() != ours.len() {
        out.push(format!(
            "{} sockets but only {} distinct endpoints pairs",
            ours.len(),
            by_key.len()
        ));
    }
    if rows.len() != ours.len() {
        out.push(format!(
            "ss printed {} rows, the dump has {} sockets",
            rows.len(),
            ours.len()
        ));
    }
    for row in rows {
        match row.local.zip(row.peer).and_then(|key| by_key.get(&key)) {
            Some(s) => out.extend(differences(s, row, same_snapshot)),
            None => out.push(format!("ss row {row:?} is not in the dump")),
        }
    }
    out
}
