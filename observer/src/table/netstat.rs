//! The table as `netstat -ant` prints it (net-tools 2.10): header lines, the `%-4s  %6ld %6ld %-23s %-23s
//! %-11s` row, addresses cut to 22 characters unless wide, IPv4-mapped addresses shown as IPv4, and the `-e`,
//! `-p` and `-o` columns; plus the reader of netstat's own output that `observer compare` uses.

use std::net::{IpAddr, SocketAddr};

use crate::sys::sockets::{Socket, Timer, TimerKind};

/// The first header line of `netstat -a`.
pub const TITLE: &str = "Active Internet connections (servers and established)";
/// Width of the address columns (`%-23s`, wider when an address is longer).
const ADDR_WIDTH: usize = 23;
/// Longest address and port, colon excluded, that netstat prints without `-W`.
const SHORT_LEN: usize = 22;
/// Width of the PID/Program name column (netstat's `PROGNAME_WIDTH`).
const PROGNAME_WIDTH: usize = 20;

/// Which optional netstat columns to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-W`: never cut addresses.
    pub wide: bool,
    /// `-p`: PID/Program name.
    pub programs: bool,
    /// `-e`: User and Inode (the uid as a number, as `-n` implies).
    pub extend: bool,
    /// `-o`: Timer.
    pub timers: bool,
}

/// The two header lines, each ending in a newline.
pub fn header(opts: &Options) -> String {
    let mut out = format!("{TITLE}\nProto Recv-Q Send-Q Local Address           Foreign Address         State      ");
    if opts.extend {
        out.push_str(" User       Inode     ");
    }
    if opts.programs {
        out.push_str(&format!(" {:<PROGNAME_WIDTH$}", "PID/Program name"));
    }
    if opts.timers {
        out.push_str(" Timer");
    }
    out.push('\n');
    out
}

/// A host as netstat prints it: dotted quad for IPv4 and for IPv4-mapped IPv6 (`fix_v4_address`), `inet_ntop`
/// otherwise (`::` for the IPv6 wildcard).
pub fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => super::ntop(ip),
        },
        v4 => super::ntop(v4),
    }
}

/// `host:port` as netstat's `addr_do_one` builds it: port 0 is `*`; without `wide`, an address whose host and
/// port exceed 22 characters keeps the whole port and the first `22 - port` characters of the host.
pub fn address(addr: SocketAddr, wide: bool) -> String {
    let host = host(addr.ip());
    let port = match addr.port() {
        0 => "*".to_string(),
        p => p.to_string(),
    };
    if !wide && host.len() + port.len() > SHORT_LEN {
        let port_len = port.len().min(SHORT_LEN - 4);
        let host_len = SHORT_LEN - port_len;
        format!("{}:{}", prefix(&host, host_len), prefix(&port, port_len))
    } else {
        format!("{host}:{port}")
    }
}

/// The first `n` bytes of an ASCII string (all of it when shorter).
fn prefix(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

/// The Timer column: `off (0.00/r/p)`, `on (s.cc/r/p)`, `keepalive (...)`, `timewait (...)`, `probe (...)`:
/// seconds left with two decimals (netstat divides clock ticks of 10 ms), retransmissions, probes.
pub fn timer(t: &Timer) -> String {
    let (retr, probes) = (t.retransmits, t.probes);
    let centis = t.expires_ms / 10;
    let left = format!("{}.{:02}/{retr}/{probes}", centis / 100, centis % 100);
    match t.kind {
        TimerKind::Off => format!("off (0.00/{retr}/{probes})"),
        TimerKind::Retransmit => format!("on ({left})"),
        TimerKind::KeepAlive => format!("keepalive ({left})"),
        TimerKind::TimeWait => format!("timewait ({left})"),
        TimerKind::Probe => format!("probe ({left})"),
        TimerKind::Other(n) => format!("unkn-{n} ({left})"),
    }
}

/// One row without its newline; `program` is the PID/Program name cell ([`Owner::netstat_label`]; `-` when the
/// owner is unknown).
///
/// [`Owner::netstat_label`]: crate::sys::sockets::process::Owner::netstat_label
pub fn row(s: &Socket, opts: &Options, program: Option<&str>) -> String {
    let proto = if s.is_v6() { "tcp6" } else { "tcp" };
    let local = address(s.local, opts.wide);
    let remote = address(s.remote, opts.wide);
    let mut out = format!(
        "{proto:<4}  {:>6} {:>6} {local:<ADDR_WIDTH$} {remote:<ADDR_WIDTH$} {:<11}",
        s.recv_q,
        s.send_q,
        s.state.name()
    );
    if opts.extend {
        out.push_str(&format!(" {:<10} {:<10}", s.uid, s.inode));
    }
    if opts.programs {
        out.push_str(&format!(" {:<PROGNAME_WIDTH$}", program.unwrap_or("-")));
    }
    if opts.timers {
        out.push(' ');
        out.push_str(&timer(&s.timer));
    }
    out
}

/// The whole listing: header and one line per socket; `program` gives the PID/Program name cell of an inode.
pub fn render(sockets: &[Socket], opts: &Options, program: impl FnMut(u64) -> Option<String>) -> String {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write(sockets, opts, program, &mut out);
    String::from_utf8(out).expect("the listing is UTF-8")
}

/// Writes the listing to `out` line by line.
pub fn write(
    sockets: &[Socket],
    opts: &Options,
    mut program: impl FnMut(u64) -> Option<String>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    out.write_all(header(opts).as_bytes())?;
    for s in sockets {
        let cell = if opts.programs && s.inode != 0 {
            program(s.inode)
        } else {
            None
        };
        out.write_all(row(s, opts, cell.as_deref()).as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One data row of `netstat -ant` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `tcp6` rather than `tcp`.
    pub v6: bool,
    /// Recv-Q.
    pub recv_q: u64,
    /// Send-Q.
    pub send_q: u64,
    /// Local address as printed (possibly cut).
    pub local: String,
    /// Foreign address as printed.
    pub remote: String,
    /// State as printed.
    pub state: String,
}

/// Reads the TCP rows of netstat's output (header lines skipped); the error names the line that did not parse.
pub fn parse(output: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in output.lines().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let v6 = match cols.first() {
            Some(&"tcp") => false,
            Some(&"tcp6") => true,
            _ if line.starts_with("Active ") || line.starts_with("Proto ") || line.trim().is_empty() => continue,
            _ => return Err(format!("netstat line {}: not a TCP row: {line:?}", i + 1)),
        };
        let number = |at: usize, what: &str| -> Result<u64, String> {
            cols.get(at)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("netstat line {}: bad {what} in {line:?}", i + 1))
        };
        let text = |at: usize, what: &str| -> Result<String, String> {
            cols.get(at)
                .map(|c| c.to_string())
                .ok_or_else(|| format!("netstat line {}: no {what} in {line:?}", i + 1))
        };
        rows.push(Row {
            v6,
            recv_q: number(1, "Recv-Q")?,
            send_q: number(2, "Send-Q")?,
            local: text(3, "local address")?,
            remote: text(4, "foreign address")?,
            state: text(5, "state")?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sys::sockets::{TcpState, procfs},
        table::tests::sock,
    };

    /// The fixture's /proc rows, in /proc order (which is netstat's).
    fn proc_sockets() -> Vec<Socket> {
        let v4 = include_str!("testdata/proc_tcp.txt");
        let v6 = include_str!("testdata/proc_tcp6.txt");
        let mut rows = procfs::parse(v4, false, "proc_tcp.txt").expect("proc_tcp");
        rows.extend(procfs::parse(v6, true, "proc_tcp6.txt").expect("proc_tcp6"));
        rows.into_iter().map(|r| r.socket).collect()
    }

    #[test]
    fn listings_match_netstat_on_the_same_proc_bytes() {
        let sockets = proc_sockets();
        let cases = [
            (Options::default(), include_str!("testdata/netstat_ant.txt")),
            (
                Options {
                    wide: true,
                    ..Options::default()
                },
                include_str!("testdata/netstat_antW.txt"),
            ),
            (
                Options {
                    extend: true,
                    timers: true,
                    ..Options::default()
                },
                include_str!("testdata/netstat_antoe.txt"),
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(render(&sockets, &opts, |_| None), want, "{opts:?}");
        }
    }

    #[test]
    fn the_program_column_lines_up_as_netstat_prints_it() {
        let want = include_str!("testdata/netstat_antpe.txt");
        // The labels come from netstat's own rows (inode, then PID/Program name); the layout is what is tested.
        let labels: std::collections::HashMap<u64, String> = want
            .lines()
            .skip(2)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.get(7)?.parse().ok()?, cols.get(8)?.to_string()))
            })
            .filter(|(_, label)| label != "-")
            .collect();
        let opts = Options {
            programs: true,
            extend: true,
            ..Options::default()
        };
        assert_eq!(
            render(&proc_sockets(), &opts, |inode| labels.get(&inode).cloned()),
            want
        );
    }

    #[test]
    fn parse_reads_back_what_render_writes() {
        let sockets = [
            sock("127.0.0.1:80", "0.0.0.0:0", TcpState::Listen, 2, 0),
            sock(
                "[fd00:1234:5678:9abc:def0:1234:5678:9abc]:42030",
                "[::1]:80",
                TcpState::TimeWait,
                0,
                0,
            ),
        ];
        let rows = parse(&render(&sockets, &Options::default(), |_| None)).expect("parse");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row {
                v6: false,
                recv_q: 2,
                send_q: 0,
                local: "127.0.0.1:80".into(),
                remote: "0.0.0.0:*".into(),
                state: "LISTEN".into()
            }
        );
        assert_eq!(rows[1].local, "fd00:1234:5678:9a:42030");
        assert!(parse("tcp 0 x 1:2 3:4 LISTEN").is_err());
    }
}
