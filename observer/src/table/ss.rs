//! The table as `ss -tan` prints it (iproute2 6.1): every cell is measured first and each column is as wide as
//! its widest cell, header included (`render_calc_width`); on a terminal the spare width is spread over the
//! columns. Also the reader of ss's own output that `observer compare` uses.

use std::{
    fmt::Write as _,
    io,
    net::{IpAddr, SocketAddr},
};

use super::Table;
use crate::sys::sockets::{Socket, TcpState};

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// One of ss's output columns (`struct column`); Netid is disabled by `-t`, so it is absent.
struct Column {
    align: Align,
    header: &'static str,
    /// Printed before the cell unless it starts the line.
    ldelim: &'static str,
}

const fn column(align: Align, header: &'static str, ldelim: &'static str) -> Column {
    Column { align, header, ldelim }
}

const COLUMNS: [Column; 9] = [
    column(Align::Left, "State", " "),
    column(Align::Left, "Recv-Q", " "),
    column(Align::Left, "Send-Q", " "),
    column(Align::Right, "Local Address:", " "),
    column(Align::Left, "Port", ""),
    column(Align::Right, "Peer Address:", " "),
    column(Align::Left, "Port", ""),
    // ss's COL_EXT carries the "Process" header and the `users:` cell; COL_PROC after it has no header.
    column(Align::Left, "Process", ""),
    column(Align::Left, "", ""),
];

/// A host as ss prints it (`inet_addr_print`): IPv4 dotted; the IPv6 wildcard `*` unless the socket is v6only;
/// other IPv6 addresses, IPv4-mapped ones included, in brackets.
pub fn host(ip: IpAddr, v6only: bool) -> String {
    match ip {
        IpAddr::V6(v6) if v6.is_unspecified() && !v6only => "*".to_string(),
        IpAddr::V6(_) => format!("[{}]", super::ntop(ip)),
        v4 => super::ntop(v4),
    }
}

/// A port as ss prints it: `*` for 0.
fn port(p: u16) -> String {
    if p == 0 { "*".to_string() } else { p.to_string() }
}

/// `host:port` as ss prints it.
pub fn address(addr: SocketAddr, v6only: bool) -> String {
    format!("{}:{}", host(addr.ip(), v6only), port(addr.port()))
}

/// Send-Q as ss prints it: a listener's backlog limit (0 when the source does not know it: /proc), otherwise
/// the unacknowledged bytes.
pub fn send_q(s: &Socket) -> u32 {
    if s.state == TcpState::Listen {
        s.backlog_limit.unwrap_or(0)
    } else {
        s.send_q
    }
}

/// Writes the cells of one row into `cells`, reusing their buffers (a listener's Recv-Q is its accept queue).
fn cells(s: &Socket, v6only: bool, cells: &mut [String; 9]) {
    for c in cells.iter_mut() {
        c.clear();
    }
    // Writing into a String cannot fail.
    let _ = write!(cells[0], "{}", s.state.ss_name());
    let _ = write!(cells[1], "{:<6}", s.recv_q);
    let _ = write!(cells[2], "{:<6}", send_q(s));
    let _ = write!(cells[3], "{}:", host(s.local.ip(), v6only));
    cells[4].push_str(&port(s.local.port()));
    let _ = write!(cells[5], "{}:", host(s.remote.ip(), v6only));
    cells[6].push_str(&port(s.remote.port()));
}

/// The width of stdout when it is a terminal (ss spreads the columns over it), `None` otherwise.
pub fn screen_width() -> Option<usize> {
    // SAFETY: isatty and ioctl(TIOCGWINSZ) only read the descriptor's state into a local struct.
    unsafe {
        if libc::isatty(libc::STDOUT_FILENO) != 1 {
            return None;
        }
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == -1 || size.ws_col == 0 {
            return None;
        }
        Some(usize::from(size.ws_col))
    }
}

/// Column widths: the widest cell (plus the delimiter, except in the first non-empty column), then, on a
/// screen of `screen` columns, the spare width spread over the columns of each screen line.
fn widths(max_lens: [usize; 9], screen: Option<usize>) -> [usize; 9] {
    let limit = screen.unwrap_or(usize::MAX);
    let mut widths = [0; 9];
    let mut first = true;
    for (i, col) in COLUMNS.iter().enumerate() {
        let max_len = max_lens[i];
        let width = if !first && max_len > 0 {
            max_len + col.ldelim.len()
        } else {
            max_len
        };
        widths[i] = width.min(limit);
        first &= widths[i] == 0;
    }
    if let Some(screen) = screen {
        spread(&mut widths, screen);
    }
    widths
}

/// The second pass of `render_calc_width`: break the columns into screen lines and give each line's spare
/// width to its columns, one more to the rightmost ones while a remainder lasts.
fn spread(widths: &mut [usize; 9], screen: usize) {
    let n = widths.len();
    let (mut len, mut linecols) = (0, 0);
    let mut line_start = 0;
    let mut c = 0;
    while c < n {
        if widths[c] == 0 {
            c += 1;
            continue;
        }
        linecols += 1;
        len += widths[c];
        let last = widths[c + 1..].iter().all(|&w| w == 0);
        if !last && len < screen {
            c += 1;
            continue;
        }
        let mut end = c;
        if len > screen {
            // This column goes to the next screen line.
            len -= widths[c];
            linecols -= 1;
            end = c - 1;
        }
        if len < screen && linecols > 0 {
            let pad = screen - len;
            let (spacing, mut rem) = (pad / linecols, pad % linecols);
            for w in widths[line_start..=end].iter_mut().rev().filter(|w| **w > 0) {
                *w += spacing;
                if rem > 0 {
                    *w += 1;
                    rem -= 1;
                }
            }
        }
        line_start = end + 1;
        c = end + 1;
        len = 0;
        linecols = 0;
    }
}

/// The whole `ss -tan` listing for `table`; `screen` is the terminal width (`None` when not a terminal).
pub fn render(table: &Table, screen: Option<usize>) -> String {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = write(table, screen, &mut out);
    String::from_utf8(out).expect("the listing is UTF-8")
}

/// Writes the listing to `out`: every row is measured in a first pass and formatted again in the second, so
/// nothing but the table itself is held.
pub fn write(table: &Table, screen: Option<usize>, out: &mut impl io::Write) -> io::Result<()> {
    let header = COLUMNS.map(|c| c.header.to_string());
    let mut row: [String; 9] = Default::default();
    let mut max_lens = header.each_ref().map(String::len);
    for s in &table.sockets {
        cells(s, table.v6only(s), &mut row);
        for (m, c) in max_lens.iter_mut().zip(&row) {
            *m = (*m).max(c.len());
        }
    }
    let widths = widths(max_lens, screen);
    let mut line = String::new();
    write_line(&header, &widths, &mut line);
    out.write_all(line.as_bytes())?;
    for s in &table.sockets {
        cells(s, table.v6only(s), &mut row);
        write_line(&row, &widths, &mut line);
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// One screen line of `cells` laid out in `widths`, into `line` (cleared first).
fn write_line(cells: &[String; 9], widths: &[usize; 9], line: &mut String) {
    line.clear();
    for (i, (col, cell)) in COLUMNS.iter().zip(cells).enumerate() {
        let mut printed = 0;
        if i > 0 {
            line.push_str(col.ldelim);
            printed = col.ldelim.len();
        }
        let width = widths[i];
        if col.align == Align::Right && width > 0 {
            let pad = width.saturating_sub(cell.len() + printed);
            line.extend(std::iter::repeat_n(' ', pad));
            printed += pad;
        }
        line.push_str(cell);
        printed += cell.len();
        if col.align == Align::Left && width > 0 {
            line.extend(std::iter::repeat_n(' ', width.saturating_sub(printed)));
        }
    }
    line.push('\n');
}

/// One data row of `ss -tan` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// State as printed (`ESTAB`, `SYN-RECV`...).
    pub state: String,
    /// Recv-Q.
    pub recv_q: u64,
    /// Send-Q.
    pub send_q: u64,
    /// Local address and port as printed.
    pub local: String,
    /// Peer address and port as printed.
    pub remote: String,
}

impl Row {
    /// True for an IPv6 socket: bracketed addresses and the `*` wildcard are IPv6, dotted quads IPv4.
    pub fn is_v6(&self) -> bool {
        self.local.starts_with('[') || self.local.starts_with("*:")
    }
}

/// Reads the rows of ss's output (the header skipped); the error names the line that did not parse.
pub fn parse(output: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in output.lines().enumerate() {
        if line.starts_with("State ") || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [state, recv_q, send_q, local, remote, ..] = cols[..] else {
            return Err(format!("ss line {}: expected 5 columns in {line:?}", i + 1));
        };
        let number = |c: &str, what: &str| -> Result<u64, String> {
            c.parse().map_err(|_| format!("ss line {}: bad {what} {c:?}", i + 1))
        };
        rows.push(Row {
            state: state.to_string(),
            recv_q: number(recv_q, "Recv-Q")?,
            send_q: number(send_q, "Send-Q")?,
            local: local.to_string(),
            remote: remote.to_string(),
        });
    }
    Ok(rows)
}

/// An address printed by ss as a socket address: `*` is the IPv6 wildcard, a `*` port is 0, brackets and the
/// `%interface` after the host are dropped; `None` when it does not read as one.
pub fn parse_address(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    let host = host.split_once('%').map_or(host, |(h, _)| h);
    let ip = match host {
        "*" => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        h => h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
            .parse()
            .ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{
        Origin,
        tests::{fixture_table, sock},
    };

    #[test]
    fn the_listing_matches_ss_on_the_same_table() {
        let want = include_str!("testdata/ss_tan.txt");
        assert_eq!(render(&fixture_table(), None), want);
    }

    #[test]
    fn parse_reads_the_addresses_ss_printed() {
        let table = fixture_table();
        let rows = parse(include_str!("testdata/ss_tan.txt")).expect("ss_tan.txt");
        assert_eq!(rows.len(), table.sockets.len());
        let canonical = |a: SocketAddr| (crate::sys::sockets::canonical(a.ip()), a.port());
        for (row, s) in rows.iter().zip(&table.sockets) {
            assert_eq!(row.is_v6(), s.is_v6(), "{row:?}");
            assert_eq!(
                parse_address(&row.local).map(canonical),
                Some(canonical(s.local)),
                "{row:?}"
            );
            assert_eq!(
                parse_address(&row.remote).map(canonical),
                Some(canonical(s.remote)),
                "{row:?}"
            );
        }
        // ss puts the interface of a socket bound to one after the host (`sock_addr_print`).
        assert_eq!(
            parse_address("[fe80::1]%veth-a:22"),
            Some(SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, 1], 22)))
        );
        assert_eq!(parse_address("nonsense"), None);
    }

    #[test]
    fn spare_width_goes_to_the_columns_of_each_screen_line() {
        let table = Table::new(
            vec![sock("127.0.0.1:80", "0.0.0.0:0", TcpState::Listen, 0, 0)],
            Origin::Diag,
            false,
        );
        let wide = render(&table, Some(200));
        assert!(wide.lines().all(|l| l.len() == 200), "{wide:?}");
        let narrow = render(&table, Some(30));
        assert!(narrow.lines().all(|l| l.len() % 30 == 0), "{narrow:?}");
        assert_eq!(render(&table, None).lines().count(), 2);
    }
}
