//! `observer compare`: our table against the real `netstat -ant` and `ss -tan`, taken right after it, row by
//! row. Rows are matched by family and the local and remote address as each tool prints them; a matched row
//! agrees when its state and both queues agree too.
//!
//! Known differences are explained, not counted: a listener's Send-Q (0 in netstat, the backlog limit in ss;
//! ours is checked against each), netstat's 22-character address cut (rows are matched on the cut text), ss's
//! SYN-RECV rows, which show zero queues, and queues that moved between the snapshots (when the first
//! snapshots differ, all three are taken again; a queue that changed between the two takes is explained).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    process::Command,
};

use super::{Origin, Table, netstat, ss};
use crate::sys::sockets::{SocketError, TcpState, canonical};

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A tool is not installed.
    #[error("{tool} not found: install it with `apt install {package}`")]
    ToolMissing {
        /// The command.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A tool could not be started.
    #[error("running {tool}: {source}")]
    Spawn {
        /// The command.
        tool: &'static str,
        /// The error of the spawn.
        source: io::Error,
    },
    /// A tool exited with an error.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The command.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A tool printed something this code cannot read.
    #[error("reading the output of {tool}: {reason}")]
    Parse {
        /// The command.
        tool: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Our own table could not be read.
    #[error("reading the socket table: {0}")]
    Table(#[from] SocketError),
}

/// The tool a row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    /// `netstat -ant`.
    Netstat,
    /// `ss -tan`.
    Ss,
}

impl Tool {
    /// The command name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Netstat => "netstat",
            Tool::Ss => "ss",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Tool::Netstat => &["-ant"],
            Tool::Ss => &["-tan"],
        }
    }

    fn package(self) -> &'static str {
        match self {
            Tool::Netstat => "net-tools",
            Tool::Ss => "iproute2",
        }
    }
}

/// One row in a tool's own terms: ours formatted by that tool's rules, or the tool's as it printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// An IPv6 (`tcp6`) socket.
    pub v6: bool,
    /// Local address and port as printed.
    pub local: String,
    /// Remote address and port as printed.
    pub remote: String,
    /// State name as printed.
    pub state: String,
    /// Recv-Q.
    pub recv_q: u64,
    /// Send-Q.
    pub send_q: u64,
    /// netstat cut an address of this row to 22 characters.
    pub cut: bool,
}

impl Line {
    /// A tool's row as it printed it: `[local, remote, state]` and `(recv_q, send_q)`.
    fn printed(v6: bool, [local, remote, state]: [&String; 3], (recv_q, send_q): (u64, u64)) -> Line {
        Line {
            v6,
            local: local.clone(),
            remote: remote.clone(),
            state: state.clone(),
            recv_q,
            send_q,
            cut: false,
        }
    }

    fn key(&self) -> (bool, &str, &str) {
        (self.v6, &self.local, &self.remote)
    }

    fn describe(&self) -> String {
        let family = if self.v6 { "tcp6" } else { "tcp" };
        format!("{family} {} {} -> {}", self.state, self.local, self.remote)
    }
}

/// Our table as `tool` would print it.
pub fn ours(table: &Table, tool: Tool) -> Vec<Line> {
    table
        .sockets
        .iter()
        .map(|s| match tool {
            Tool::Netstat => {
                let (local, remote) = (netstat::address(s.local, false), netstat::address(s.remote, false));
                let cut = local != netstat::address(s.local, true) || remote != netstat::address(s.remote, true);
                Line {
                    v6: s.is_v6(),
                    local,
                    remote,
                    state: s.state.name().to_string(),
                    recv_q: u64::from(s.recv_q),
                    send_q: u64::from(s.send_q),
                    cut,
                }
            }
            Tool::Ss => {
                let v6only = table.v6only(s);
                Line {
                    v6: s.is_v6(),
                    local: ss::address(s.local, v6only),
                    remote: ss::address(s.remote, v6only),
                    state: s.state.ss_name().to_string(),
                    recv_q: u64::from(s.recv_q),
                    send_q: u64::from(ss::send_q(s)),
                    cut: false,
                }
            }
        })
        .collect()
}

/// netstat's rows as [`Line`]s.
pub fn netstat_lines(rows: &[netstat::Row]) -> Vec<Line> {
    rows.iter()
        .map(|r| Line::printed(r.v6, [&r.local, &r.remote, &r.state], (r.recv_q, r.send_q)))
        .collect()
}

/// ss's rows as [`Line`]s.
pub fn ss_lines(rows: &[ss::Row]) -> Vec<Line> {
    rows.iter()
        .map(|r| Line::printed(r.is_v6(), [&r.local, &r.remote, &r.state], (r.recv_q, r.send_q)))
        .collect()
}

/// A printed address as a socket address with a canonical (IPv4 for IPv4-mapped) host; `None` for a cut one.
fn loose_address(tool: Tool, text: &str) -> Option<(IpAddr, u16)> {
    let addr = match tool {
        Tool::Ss => ss::parse_address(text)?,
        Tool::Netstat => {
            let (host, port) = text.rsplit_once(':')?;
            let port = if port == "*" { 0 } else { port.parse().ok()? };
            SocketAddr::new(host.parse().ok()?, port)
        }
    };
    Some((canonical(addr.ip()), addr.port()))
}

type LooseKey = (bool, (IpAddr, u16), (IpAddr, u16));

/// A queue's field name and how to read it from a [`Line`].
type Queue = (&'static str, fn(&Line) -> u64);

fn loose_key(tool: Tool, line: &Line) -> Option<LooseKey> {
    Some((
        line.v6,
        loose_address(tool, &line.local)?,
        loose_address(tool, &line.remote)?,
    ))
}

/// What differs in one row (or that the row is on one side only).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// The row, in the tool's terms (ours when we have it).
    pub row: String,
    /// `state`, `recv_q`, `send_q`, `address`, `missing` (ours only) or `extra` (the tool's only).
    pub field: &'static str,
    /// Our value.
    pub ours: Option<String>,
    /// The tool's value.
    pub theirs: Option<String>,
}

/// The comparison with one tool.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ToolReport {
    /// Matched rows without an unexplained difference.
    pub agree: usize,
    /// Rows with an unexplained difference, or on one side only.
    pub differ: usize,
    /// Every unexplained difference.
    pub differences: Vec<Difference>,
    /// Known differences seen, one sentence each.
    pub explained: Vec<String>,
}

/// Both comparisons of one moment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Rows in our table.
    pub rows: usize,
    /// Where our table came from.
    pub source: Origin,
    /// The first snapshots differed and all three were taken again (this report is of the second).
    pub retaken: bool,
    /// Against `netstat -ant`.
    pub netstat: ToolReport,
    /// Against `ss -tan`.
    pub ss: ToolReport,
}

impl Report {
    /// True when neither tool differs.
    pub fn agrees(&self) -> bool {
        self.netstat.differ == 0 && self.ss.differ == 0
    }

    /// The summary line, each difference on its own line, then the explanations.
    pub fn text(&self) -> String {
        let mut out = format!(
            "compare: {} rows, netstat: {} agree, {} differ; ss: {} agree, {} differ\n",
            self.rows, self.netstat.agree, self.netstat.differ, self.ss.agree, self.ss.differ
        );
        if self.retaken {
            out.push_str("note: the first snapshots differed; all three were taken again and compared\n");
        }
        for (tool, report) in [(Tool::Netstat, &self.netstat), (Tool::Ss, &self.ss)] {
            for d in &report.differences {
                let name = tool.name();
                let line = match d.field {
                    "missing" => format!("{name}: missing in {name}: {}", d.row),
                    "extra" => format!("{name}: only in {name}: {}", d.row),
                    field => format!(
                        "{name}: {}: {field} ours {}, {name} {}",
                        d.row,
                        d.ours.as_deref().unwrap_or("-"),
                        d.theirs.as_deref().unwrap_or("-")
                    ),
                };
                out.push_str(&line);
                out.push('\n');
            }
            for e in &report.explained {
                out.push_str(&format!("explained ({}): {e}\n", tool.name()));
            }
        }
        out
    }
}

/// Our table and both tools' rows, taken one right after the other.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Ours.
    pub table: Table,
    /// `netstat -ant`.
    pub netstat: Vec<netstat::Row>,
    /// `ss -tan`.
    pub ss: Vec<ss::Row>,
}

impl Snapshot {
    /// Reads our table from `source`, then runs netstat and ss.
    pub fn take(source: super::Source) -> Result<Snapshot, CompareError> {
        let table = Table::read(source)?;
        let netstat_out = run(Tool::Netstat)?;
        let ss_out = run(Tool::Ss)?;
        let netstat = netstat::parse(&netstat_out).map_err(|reason| CompareError::Parse {
            tool: "netstat",
            reason,
        })?;
        let ss = ss::parse(&ss_out).map_err(|reason| CompareError::Parse { tool: "ss", reason })?;
        Ok(Snapshot { table, netstat, ss })
    }

    fn lines(&self, tool: Tool) -> (Vec<Line>, Vec<Line>) {
        match tool {
            Tool::Netstat => (ours(&self.table, tool), netstat_lines(&self.netstat)),
            Tool::Ss => (ours(&self.table, tool), ss_lines(&self.ss)),
        }
    }
}

/// Runs `tool` with the C locale (netstat translates its headers) and returns its stdout.
fn run(tool: Tool) -> Result<String, CompareError> {
    let out = Command::new(tool.name())
        .args(tool.args())
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                CompareError::ToolMissing {
                    tool: tool.name(),
                    package: tool.package(),
                }
            } else {
                CompareError::Spawn {
                    tool: tool.name(),
                    source,
                }
            }
        })?;
    if !out.status.success() {
        return Err(CompareError::Failed {
            tool: tool.name(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Compares one snapshot; `before` is an earlier one, whose queues tell which differences moved in between.
pub fn evaluate(now: &Snapshot, before: Option<&Snapshot>) -> Report {
    let report = |tool: Tool| {
        let (ours, theirs) = now.lines(tool);
        let earlier = before.map(|b| b.lines(tool));
        compare_lines(
            tool,
            &ours,
            &theirs,
            earlier.as_ref().map(|(o, t)| (o.as_slice(), t.as_slice())),
            now.table.origin,
        )
    };
    Report {
        rows: now.table.sockets.len(),
        source: now.table.origin,
        retaken: before.is_some(),
        netstat: report(Tool::Netstat),
        ss: report(Tool::Ss),
    }
}

/// Matches `ours` against `theirs` (both in `tool`'s terms) and reports every difference that no known cause
/// explains. `earlier` holds both sides' lines of a previous take; `origin` is where our table came from.
pub fn compare_lines(
    tool: Tool,
    ours: &[Line],
    theirs: &[Line],
    earlier: Option<(&[Line], &[Line])>,
    origin: Origin,
) -> ToolReport {
    let mut report = ToolReport::default();
    let mut by_key: HashMap<(bool, &str, &str), VecDeque<usize>> = HashMap::new();
    for (i, line) in theirs.iter().enumerate() {
        by_key.entry(line.key()).or_default().push_back(i);
    }
    let mut pairs = Vec::new();
    let mut lonely_ours = Vec::new();
    for (i, line) in ours.iter().enumerate() {
        match by_key.get_mut(&line.key()).and_then(VecDeque::pop_front) {
            Some(j) => pairs.push((i, j)),
            None => lonely_ours.push(i),
        }
    }
    let mut lonely_theirs: Vec<usize> = by_key.into_values().flatten().collect();
    lonely_theirs.sort_unstable();

    // Rows left over on both sides may be one socket whose address the two sides print differently.
    let mut loose: HashMap<LooseKey, VecDeque<usize>> = HashMap::new();
    for &j in &lonely_theirs {
        if let Some(k) = loose_key(tool, &theirs[j]) {
            loose.entry(k).or_default().push_back(j);
        }
    }
    let mut readdressed = Vec::new();
    lonely_ours.retain(|&i| {
        let found = loose_key(tool, &ours[i])
            .and_then(|k| loose.get_mut(&k))
            .and_then(VecDeque::pop_front);
        if let Some(j) = found {
            readdressed.push((i, j));
        }
        found.is_none()
    });
    lonely_theirs.retain(|j| !readdressed.iter().any(|&(_, k)| k == *j));

    let earlier_line = |side: Option<&'_ [Line]>, key: (bool, &str, &str)| -> Option<Line> {
        side?.iter().find(|l| l.key() == key).cloned()
    };
    let queues: [Queue; 2] = [("recv_q", |l| l.recv_q), ("send_q", |l| l.send_q)];
    let (mut syn_recv_zero, mut backlog_unknown) = (0, 0);
    for &(i, j) in pairs.iter().chain(&readdressed) {
        let (o, t) = (&ours[i], &theirs[j]);
        let row = o.describe();
        let mut diffs = Vec::new();
        if o.local != t.local || o.remote != t.remote {
            diffs.push(Difference {
                row: row.clone(),
                field: "address",
                ours: Some(format!("{} -> {}", o.local, o.remote)),
                theirs: Some(format!("{} -> {}", t.local, t.remote)),
            });
        }
        if o.state != t.state {
            diffs.push(Difference {
                row: row.clone(),
                field: "state",
                ours: Some(o.state.clone()),
                theirs: Some(t.state.clone()),
            });
        }
        for (field, queue) in queues {
            let (ours_q, theirs_q) = (queue(o), queue(t));
            if ours_q == theirs_q {
                continue;
            }
            let before_ours = earlier_line(earlier.map(|(o, _)| o), o.key()).map(|l| queue(&l));
            let before_theirs = earlier_line(earlier.map(|(_, t)| t), t.key()).map(|l| queue(&l));
            if tool == Tool::Ss && t.state == TcpState::SynRecv.ss_name() && theirs_q == 0 {
                syn_recv_zero += 1;
            } else if tool == Tool::Ss && field == "send_q" && t.state == "LISTEN" && origin == Origin::Proc {
                backlog_unknown += 1;
            } else if before_ours.is_some_and(|b| b != ours_q) || before_theirs.is_some_and(|b| b != theirs_q) {
                report.explained.push(format!(
                    "{row}: {field} moved between the snapshots (ours {} then {ours_q}, {} {} then {theirs_q})",
                    before_ours.map_or("-".to_string(), |v| v.to_string()),
                    tool.name(),
                    before_theirs.map_or("-".to_string(), |v| v.to_string()),
                ));
            } else {
                diffs.push(Difference {
                    row: row.clone(),
                    field,
                    ours: Some(ours_q.to_string()),
                    theirs: Some(theirs_q.to_string()),
                });
            }
        }
        if diffs.is_empty() {
            report.agree += 1;
        } else {
            report.differ += 1;
            report.differences.extend(diffs);
        }
    }
    for &i in &lonely_ours {
        report.differ += 1;
        report.differences.push(Difference {
            row: ours[i].describe(),
            field: "missing",
            ours: None,
            theirs: None,
        });
    }
    for &j in &lonely_theirs {
        report.differ += 1;
        report.differences.push(Difference {
            row: theirs[j].describe(),
            field: "extra",
            ours: None,
            theirs: None,
        });
    }

    let listeners = pairs.iter().filter(|&&(i, _)| ours[i].state == "LISTEN").count();
    if listeners > 0 {
        report.explained.push(match tool {
            Tool::Netstat => format!("{listeners} LISTEN rows: netstat prints Send-Q 0, so ours is checked as 0"),
            Tool::Ss => format!(
                "{listeners} LISTEN rows: ss prints the backlog limit as Send-Q, so ours is checked as the limit"
            ),
        });
    }
    let cut = pairs.iter().filter(|&&(i, _)| ours[i].cut).count();
    if cut > 0 {
        report.explained.push(format!(
            "{cut} rows: netstat cuts addresses to 22 characters; matched on the cut text"
        ));
    }
    if syn_recv_zero > 0 {
        report.explained.push(format!(
            "{syn_recv_zero} SYN-RECV queues: ss shows request socks with zero queues"
        ));
    }
    if backlog_unknown > 0 {
        report.explained.push(format!(
            "{backlog_unknown} LISTEN rows: the backlog limit is unknown from /proc"
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::fixture_table;

    /// The fixture moment: our table from sock_diag, netstat on /proc bytes and ss, all of one still scenario.
    fn fixture() -> Snapshot {
        Snapshot {
            table: fixture_table(),
            netstat: netstat::parse(include_str!("testdata/netstat_ant.txt")).expect("netstat_ant.txt"),
            ss: ss::parse(include_str!("testdata/ss_tan.txt")).expect("ss_tan.txt"),
        }
    }

    #[test]
    fn the_fixture_agrees_row_by_row() {
        let snap = fixture();
        let report = evaluate(&snap, None);
        let n = snap.table.sockets.len();
        assert!(report.agrees(), "{}", report.text());
        assert_eq!((report.rows, report.netstat.agree, report.ss.agree), (n, n, n));
        let first = report.text().lines().next().map(str::to_string);
        assert_eq!(
            first,
            Some(format!(
                "compare: {n} rows, netstat: {n} agree, 0 differ; ss: {n} agree, 0 differ"
            ))
        );
        assert!(
            report.netstat.explained.iter().any(|e| e.contains("cuts addresses")),
            "{:?}",
            report.netstat
        );
        assert!(
            report.ss.explained.iter().any(|e| e.contains("backlog limit")),
            "{:?}",
            report.ss
        );
    }

    #[test]
    fn a_doctored_table_is_caught() {
        let mut snap = fixture();
        let sockets = &mut snap.table.sockets;
        let established = sockets
            .iter()
            .position(|s| s.state == TcpState::Established && s.recv_q > 0)
            .expect("data");
        sockets[established].recv_q += 1;
        let listener = sockets
            .iter()
            .position(|s| s.state == TcpState::Listen)
            .expect("listener");
        sockets[listener].backlog_limit = sockets[listener].backlog_limit.map(|b| b + 1);
        let syn_sent = sockets
            .iter()
            .position(|s| s.state == TcpState::SynSent)
            .expect("SYN_SENT");
        sockets[syn_sent].state = TcpState::Established;
        let time_wait = sockets
            .iter()
            .position(|s| s.state == TcpState::TimeWait)
            .expect("TIME_WAIT");
        sockets.remove(time_wait);
        let report = evaluate(&snap, None);
        assert!(!report.agrees());
        let fields = |r: &ToolReport| {
            let mut f: Vec<&str> = r.differences.iter().map(|d| d.field).collect();
            f.sort_unstable();
            f
        };
        // netstat: the Recv-Q, the state, the missing TIME_WAIT (ours lacks a row netstat has).
        assert_eq!(
            fields(&report.netstat),
            ["extra", "recv_q", "state"],
            "{}",
            report.text()
        );
        assert_eq!(report.netstat.differ, 3);
        // ss also sees the backlog limit, which netstat never shows.
        assert_eq!(
            fields(&report.ss),
            ["extra", "recv_q", "send_q", "state"],
            "{}",
            report.text()
        );
        assert!(report.text().lines().count() > 4);
    }

    #[test]
    fn an_address_printed_differently_is_one_row_that_differs() {
        let snap = fixture();
        let mut ours = ours(&snap.table, Tool::Ss);
        let theirs = ss_lines(&snap.ss);
        let i = ours
            .iter()
            .position(|l| l.local.starts_with("*:"))
            .expect("a dual-stack wildcard listener");
        ours[i].local = ours[i].local.replacen('*', "[::]", 1);
        let report = compare_lines(Tool::Ss, &ours, &theirs, None, Origin::Diag);
        assert_eq!(report.differ, 1);
        assert_eq!(report.differences[0].field, "address");
    }

    #[test]
    fn queues_that_moved_between_takes_are_explained() {
        let snap = fixture();
        let before = ss_lines(&snap.ss);
        let mut theirs = before.clone();
        let i = theirs
            .iter()
            .position(|l| l.state == "ESTAB" && l.recv_q > 0)
            .expect("data");
        theirs[i].recv_q += 10;
        let ours = ours(&snap.table, Tool::Ss);
        let moved = compare_lines(Tool::Ss, &ours, &theirs, Some((&ours, &before)), Origin::Diag);
        assert_eq!(moved.differ, 0, "{moved:?}");
        assert!(
            moved
                .explained
                .iter()
                .any(|e| e.contains("moved between the snapshots"))
        );
        // Without an earlier take, or when nothing moved in between, the same difference counts.
        assert_eq!(compare_lines(Tool::Ss, &ours, &theirs, None, Origin::Diag).differ, 1);
        assert_eq!(
            compare_lines(Tool::Ss, &ours, &theirs, Some((&ours, &theirs)), Origin::Diag).differ,
            1
        );
    }

    #[test]
    fn ss_request_socks_with_zero_queues_are_explained() {
        let snap = fixture();
        let theirs = ss_lines(&snap.ss);
        let mut ours = ours(&snap.table, Tool::Ss);
        let i = ours.iter().position(|l| l.state == "SYN-RECV").expect("a request sock");
        ours[i].send_q = 1;
        let report = compare_lines(Tool::Ss, &ours, &theirs, None, Origin::Diag);
        assert_eq!(report.differ, 0);
        assert!(report.explained.iter().any(|e| e.contains("SYN-RECV")));
    }
}
