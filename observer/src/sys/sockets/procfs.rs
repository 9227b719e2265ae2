//! /proc/net/tcp and /proc/net/tcp6: every column the kernel prints (`tcp4_seq_show`, `tcp6_seq_show`), read
//! into the shared [`Socket`] model plus the columns only this source has.
//!
//! The tables describe one network namespace: the reading thread's. They are read through /proc/thread-self,
//! because /proc/net is /proc/self/net, the namespace of the process's main thread, which is not the one a
//! thread that entered another namespace with setns(2) wants.
//!
//! Three row shapes exist: full sockets (17 columns), and half-open request socks and TIME_WAIT socks, which
//! stop after the socket pointer (12 columns). Request socks say st 03 (SYN_RECV) with inode 0 and the
//! listener's uid; TIME_WAIT socks print their substate, TIME_WAIT or an orphan's FIN_WAIT2, with timer 3.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::OnceLock,
};

use super::{Socket, SocketError, TcpState, Timer, TimerKind};

/// The IPv4 table of the calling thread's network namespace.
pub const TCP_PATH: &str = "/proc/thread-self/net/tcp";
/// The IPv6 table of the calling thread's network namespace (absent when the kernel has no IPv6).
pub const TCP6_PATH: &str = "/proc/thread-self/net/tcp6";

/// One row of /proc/net/tcp or tcp6: the socket and the columns the shared model has no place for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcRow {
    /// The socket (`backlog_limit`, `cookie` and `info` are never known from /proc).
    pub socket: Socket,
    /// The `sl` column: the row's position in the kernel's walk.
    pub sl: u32,
    /// `tm->when`: clock ticks (USER_HZ) until the timer fires.
    pub when_ticks: u64,
    /// Reference count (0 for request socks).
    pub refcount: i32,
    /// Kernel address of the sock (0 when kptr_restrict hides it).
    pub pointer: u64,
    /// The columns after the pointer, which only full sockets have.
    pub full: Option<FullColumns>,
}

/// The trailing columns of a full socket's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FullColumns {
    /// Retransmission timeout in clock ticks.
    pub rto_ticks: u64,
    /// Delayed-ACK timeout in clock ticks.
    pub ato_ticks: u64,
    /// `(icsk_ack.quick << 1) | pingpong`.
    pub quick_pingpong: u32,
    /// Congestion window in segments.
    pub cwnd: u32,
    /// Slow-start threshold (-1 while in initial slow start); a listener shows its TCP Fast Open queue limit.
    pub ssthresh: i32,
}

impl ProcRow {
    /// True for a half-open request sock (a SYN_RECV row without the full-socket columns).
    pub fn is_request(&self) -> bool {
        self.full.is_none() && self.socket.state == TcpState::SynRecv
    }
}

/// Clock ticks per second of the `tm->when`, `rto` and `ato` columns: sysconf(_SC_CLK_TCK), USER_HZ.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
    })
}

/// Reads the calling thread's namespace's tables, tcp then tcp6; a missing tcp6 means no IPv6, not an error.
pub fn read_table() -> Result<Vec<ProcRow>, SocketError> {
    let read = |path: &str| std::fs::read_to_string(path);
    let v4 = read(TCP_PATH).map_err(|source| SocketError::Read {
        path: TCP_PATH.to_string(),
        source,
    })?;
    let mut rows = parse(&v4, false, TCP_PATH)?;
    match read(TCP6_PATH) {
        Ok(v6) => rows.extend(parse(&v6, true, TCP6_PATH)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Read {
                path: TCP6_PATH.to_string(),
                source,
            });
        }
    }
    Ok(rows)
}

/// Parses the text of /proc/net/tcp (`v6` false) or tcp6 (`v6` true) written by this host's kernel; `path`
/// names the file in errors.
pub fn parse(text: &str, v6: bool, path: &str) -> Result<Vec<ProcRow>, SocketError> {
    parse_with(text, v6, path, WordOrder::NATIVE, clock_ticks_per_second())
}

/// Byte order of the host whose kernel wrote the file. The kernel prints each 32-bit address word as the
/// number it is in memory (`%08X` of a network-order word), so decoding depends on the writer's endianness.
#[derive(Clone, Copy, Debug)]
enum WordOrder {
    Little,
    Big,
}

impl WordOrder {
    const NATIVE: WordOrder = if cfg!(target_endian = "little") {
        WordOrder::Little
    } else {
        WordOrder::Big
    };

    /// The address bytes (network order) of a word printed as `word`.
    fn bytes(self, word: u32) -> [u8; 4] {
        match self {
            WordOrder::Little => word.to_le_bytes(),
            WordOrder::Big => word.to_be_bytes(),
        }
    }
}

/// Columns of request and TIME_WAIT rows (through the pointer).
const SHORT_COLUMNS: usize = 12;
/// Columns of a full socket's row.
const FULL_COLUMNS: usize = 17;

fn parse_with(text: &str, v6: bool, path: &str, order: WordOrder, ticks: u64) -> Result<Vec<ProcRow>, SocketError> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || (index == 0 && trimmed.starts_with("sl")) {
            continue;
        }
        let row = parse_row(trimmed, v6, order, ticks).map_err(|reason| SocketError::Parse {
            path: path.to_string(),
            line: index + 1,
            reason,
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(line: &str, v6: bool, order: WordOrder, ticks: u64) -> Result<ProcRow, String> {
    let cols: Vec<&str> = line.split_ascii_whitespace().collect();
    if cols.len() != SHORT_COLUMNS && cols.len() < FULL_COLUMNS {
        return Err(format!(
            "{} columns, expected {SHORT_COLUMNS} or {FULL_COLUMNS}",
            cols.len()
        ));
    }
    let col = |i: usize| cols.get(i).copied().unwrap_or_default();
    let bad = |name: &str, raw: &str| format!("bad {name} {raw:?}");
    let hex_pair = |name: &str, raw: &str| -> Result<(u64, u64), String> {
        raw.split_once(':')
            .and_then(|(a, b)| Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?)))
            .ok_or_else(|| bad(name, raw))
    };
    let narrow = |name: &str, raw: &str, n: u64| u32::try_from(n).map_err(|_| bad(name, raw));

    let sl = col(0)
        .strip_suffix(':')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("sl", col(0)))?;
    let local = endpoint(col(1), v6, order).ok_or_else(|| bad("local_address", col(1)))?;
    let remote = endpoint(col(2), v6, order).ok_or_else(|| bad("rem_address", col(2)))?;
    let state = u8::from_str_radix(col(3), 16)
        .ok()
        .and_then(TcpState::from_kernel)
        .ok_or_else(|| bad("st", col(3)))?;
    let (tx, rx) = hex_pair("tx_queue:rx_queue", col(4))?;
    let (tr, when_ticks) = hex_pair("tr:tm->when", col(5))?;
    let tr = u8::try_from(tr).map_err(|_| bad("tr", col(5)))?;
    let retransmits = u32::from_str_radix(col(6), 16).map_err(|_| bad("retrnsmt", col(6)))?;
    let uid = col(7).parse().map_err(|_| bad("uid", col(7)))?;
    let probes = col(8).parse().map_err(|_| bad("timeout", col(8)))?;
    let inode = col(9).parse().map_err(|_| bad("inode", col(9)))?;
    let refcount = col(10).parse().map_err(|_| bad("refcount", col(10)))?;
    let pointer = u64::from_str_radix(col(11), 16).map_err(|_| bad("pointer", col(11)))?;
    let full = if cols.len() >= FULL_COLUMNS {
        Some(FullColumns {
            rto_ticks: col(12).parse().map_err(|_| bad("rto", col(12)))?,
            ato_ticks: col(13).parse().map_err(|_| bad("ato", col(13)))?,
            quick_pingpong: col(14).parse().map_err(|_| bad("quick/pingpong", col(14)))?,
            cwnd: col(15).parse().map_err(|_| bad("cwnd", col(15)))?,
            ssthresh: col(16).parse().map_err(|_| bad("ssthresh", col(16)))?,
        })
    } else {
        None
    };
    Ok(ProcRow {
        socket: Socket {
            local,
            remote,
            state,
            recv_q: narrow("rx_queue", col(4), rx)?,
            send_q: narrow("tx_queue", col(4), tx)?,
            backlog_limit: None,
            timer: Timer {
                kind: TimerKind::from_kernel(tr),
                expires_ms: when_ticks.saturating_mul(1000) / ticks.max(1),
                retransmits,
                probes,
            },
            uid,
            inode,
            cookie: None,
            info: None,
            drops: None,
        },
        sl,
        when_ticks,
        refcount,
        pointer,
        full,
    })
}

/// `0100007F:0016` (or 32 hex digits for IPv6) and a hex port.
fn endpoint(raw: &str, v6: bool, order: WordOrder) -> Option<SocketAddr> {
    let (addr, port) = raw.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(8 * i..8 * i + 8)?;
        Some(order.bytes(u32::from_str_radix(hex, 16).ok()?))
    };
    let ip = match (v6, addr.len()) {
        (false, 8) => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        (true, 32) => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::sockets::canonical;

    const TCP: &str = include_str!("testdata/proc_tcp.txt");
    const TCP6: &str = include_str!("testdata/proc_tcp6.txt");
    /// `netstat -antoe` run on exactly the bytes of the two files above (see testdata/capture_procfs.sh).
    const NETSTAT: &str = include_str!("testdata/netstat_antoe.txt");
    /// USER_HZ of the machine the fixtures were captured on (and of every Linux netstat build).
    const TICKS: u64 = 100;

    fn fixture_rows() -> Vec<ProcRow> {
        let mut rows = parse_with(TCP, false, "proc_tcp.txt", WordOrder::Little, TICKS).unwrap();
        rows.extend(parse_with(TCP6, true, "proc_tcp6.txt", WordOrder::Little, TICKS).unwrap());
        rows
    }

    /// An endpoint as netstat -n prints it: IPv4-mapped addresses as IPv4, port 0 as `*`.
    fn netstat_endpoint(addr: SocketAddr) -> String {
        match addr.port() {
            0 => format!("{}:*", canonical(addr.ip())),
            port => format!("{}:{port}", canonical(addr.ip())),
        }
    }

    /// A data row of `netstat -antoe`: the eight fixed columns and the Timer text.
    struct NetstatRow<'a> {
        cols: Vec<&'a str>,
        timer: &'a str,
    }

    fn netstat_rows() -> Vec<NetstatRow<'static>> {
        NETSTAT
            .lines()
            .filter(|l| l.starts_with("tcp"))
            .map(|line| {
                let cols: Vec<&str> = line.split_ascii_whitespace().take(8).collect();
                let open = line.find(" (").expect("a Timer column");
                let word_start = line[..open].rfind(' ').map_or(0, |i| i + 1);
                NetstatRow {
                    cols,
                    timer: line[word_start..].trim_end(),
                }
            })
            .collect()
    }

    #[test]
    fn fixture_rows_agree_with_netstat_on_the_same_bytes() {
        let rows = fixture_rows();
        let netstat = netstat_rows();
        assert_eq!(rows.len(), netstat.len(), "row count");
        for (row, ns) in rows.iter().zip(&netstat) {
            let s = &row.socket;
            let ours = [
                if s.is_v6() { "tcp6" } else { "tcp" }.to_string(),
                s.recv_q.to_string(),
                s.send_q.to_string(),
                netstat_endpoint(s.local),
                netstat_endpoint(s.remote),
                s.state.name().to_string(),
                s.uid.to_string(),
                s.inode.to_string(),
            ];
            assert_eq!(ours.to_vec(), ns.cols, "row sl {}", row.sl);
        }
    }

    #[test]
    fn timer_fields_agree_with_netstat() {
        for (row, ns) in fixture_rows().iter().zip(netstat_rows()) {
            let (word, rest) = ns.timer.split_once(" (").unwrap();
            let nums: Vec<&str> = rest.trim_end_matches(')').split('/').collect();
            let kind = match word {
                "off" => TimerKind::Off,
                "on" => TimerKind::Retransmit,
                "keepalive" => TimerKind::KeepAlive,
                "timewait" => TimerKind::TimeWait,
                "probe" => TimerKind::Probe,
                other => panic!("timer {other}"),
            };
            let t = row.socket.timer;
            assert_eq!(t.kind, kind, "{}", ns.timer);
            if kind != TimerKind::Off {
                let centis: u64 = nums[0].replace('.', "").parse().unwrap();
                assert_eq!(t.expires_ms, centis * 10, "{}", ns.timer);
            }
            assert_eq!(t.retransmits.to_string(), nums[1], "{}", ns.timer);
            assert_eq!(t.probes.to_string(), nums[2], "{}", ns.timer);
        }
    }

    #[test]
    fn fixture_has_every_row_shape() {
        let rows = fixture_rows();
        let has = |f: &dyn Fn(&ProcRow) -> bool| rows.iter().any(f);
        assert!(has(&|r| r.is_request()
            && r.socket.inode == 0
            && r.socket.timer.kind == TimerKind::Retransmit));
        assert!(has(&|r| r.full.is_none() && r.socket.state == TcpState::TimeWait));
        assert!(has(&|r| r.full.is_none() && r.socket.state == TcpState::FinWait2));
        assert!(has(&|r| r.socket.state == TcpState::Listen && r.socket.recv_q > 0));
        assert!(has(
            &|r| r.socket.is_v6() && r.socket.local.ip() != canonical(r.socket.local.ip())
        ));
        assert!(rows.iter().filter(|r| r.full.is_some()).all(|r| !r.is_request()));
        assert!(
            rows.iter()
                .all(|r| r.socket.backlog_limit.is_none() && r.socket.cookie.is_none())
        );
    }

    /// The same table as a big-endian kernel prints it: every address word byte-swapped.
    fn as_big_endian(text: &str) -> String {
        let swap = |addr: &str| -> String {
            addr.as_bytes()
                .chunks(8)
                .map(|w| {
                    let word = u32::from_str_radix(std::str::from_utf8(w).unwrap(), 16).unwrap();
                    format!("{:08X}", word.swap_bytes())
                })
                .collect()
        };
        text.lines()
            .map(|line| {
                line.split(' ')
                    .enumerate()
                    .map(|(i, col)| match col.split_once(':') {
                        Some((a, port)) if i > 0 && (a.len() == 8 || a.len() == 32) && port.len() == 4 => {
                            format!("{}:{port}", swap(a))
                        }
                        _ => col.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn big_endian_words_decode_to_the_same_addresses() {
        let mut rows = parse_with(&as_big_endian(TCP), false, "tcp", WordOrder::Big, TICKS).unwrap();
        rows.extend(parse_with(&as_big_endian(TCP6), true, "tcp6", WordOrder::Big, TICKS).unwrap());
        assert_eq!(rows, fixture_rows());
    }

    #[test]
    fn native_parse_matches_the_capture_host_on_little_endian() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse(TCP, false, "tcp").unwrap(),
                fixture_rows()[..TCP.lines().count() - 1]
            );
        }
    }

    fn columns(line: &str, n: usize) -> String {
        line.split_ascii_whitespace().take(n).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn malformed_rows_name_file_line_and_column() {
        let header = TCP.lines().next().unwrap();
        let good = TCP.lines().nth(1).unwrap();
        let cases = [
            (good.replacen("0A ", "0Z ", 1), "bad st"),
            (good.replacen("0A ", "0D ", 1), "bad st"),
            (good.replacen(":1F91", ":1F91X", 1), "bad local_address"),
            (good.replacen("00000000:0000", "0000:0000", 1), "bad rem_address"),
            (good.replacen(" 00:00000000 ", " 00-00000000 ", 1), "bad tr:tm->when"),
            (good.replacen("237018", "-1", 1), "bad inode"),
            (columns(good, 16), "16 columns"),
            (columns(good, 11), "11 columns"),
        ];
        for (line, want) in cases {
            let text = format!("{header}\n{good}\n{line}\n");
            let err = parse_with(&text, false, "/proc/x/tcp", WordOrder::Little, TICKS).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("/proc/x/tcp line 3: "), "{msg}");
            assert!(msg.contains(want), "{msg} lacks {want}");
        }
        let err = parse_with(TCP6, false, "tcp6-as-v4", WordOrder::Little, TICKS).unwrap_err();
        assert!(err.to_string().contains("line 2: bad local_address"), "{err}");
    }

    #[test]
    fn empty_table_has_no_rows() {
        let header = TCP.lines().next().unwrap();
        assert!(parse(header, false, "tcp").unwrap().is_empty());
        assert!(parse("", true, "tcp6").unwrap().is_empty());
    }
}
