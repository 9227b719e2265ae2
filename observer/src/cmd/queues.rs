//! `observer queues`: one row per listening socket with its SYN queue (half-open request socks), accept queue
//! and limit, established children and drops, and the namespace's TcpExt overflow counters.
//!
//! The first table comes from the listeners and one sock_diag dump of the sockets on their ports (filtered in the
//! kernel). After that, each refresh reads only the listeners, their SYN_RECV rows (filtered the same way) and
//! TcpExt; the established counts follow the kernel's state changes (tp_btf `inet_sock_set_state`) instead of
//! rescanning the table.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;
use observer_common::Config;
use serde::Serialize;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::QueuesArgs,
    model::events::{self, Event},
    model::link::{Input, StateChange},
    sys::capture::{Capture, CaptureError, RingSizes},
    sys::privileges,
    sys::sockets::{
        Socket, TcpState,
        diag::{Diag, Families, Query},
        listener_for,
        process::{Owner, ProcessMap},
        tcpext::{self, Limits, TcpExt},
    },
    sys::sockprogs,
};

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerRow {
    /// Listening address and port.
    pub addr: SocketAddr,
    /// Owning process, when known.
    pub process: Option<Owner>,
    /// Half-open connections: the listener's request socks (SYN_RECV rows).
    pub synq: u32,
    /// Connections waiting for accept().
    pub accept: u32,
    /// The accept queue limit (the listen() backlog capped by somaxconn).
    pub limit: Option<u32>,
    /// ESTABLISHED connections on this listener's address and port (accepted or not).
    pub established: u32,
    /// Segments this listener dropped (its `sk_drops`: its share of ListenDrops, overflows included).
    pub drops: Option<u32>,
    /// Socket inode.
    pub inode: u64,
}

/// The TcpExt counters a listener's drops show in.
pub const COUNTERS: [&str; 7] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
];

/// One refresh of the view.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// One row per listener, by address.
    pub listeners: Vec<ListenerRow>,
    /// The counters now (namespace-wide).
    pub counters: HashMap<&'static str, u64>,
    /// Their change since the agent started.
    pub since_start: HashMap<&'static str, u64>,
    /// The namespace's limits.
    pub limits: Option<Limits>,
}

/// Listener rows from a full table: SYN queue and established children counted from the table's rows.
pub fn rows_from_table(table: &[Socket]) -> Vec<ListenerRow> {
    let listeners: Vec<Socket> = table.iter().filter(|s| s.state == TcpState::Listen).cloned().collect();
    let mut rows: Vec<ListenerRow> = listeners.iter().map(row_of).collect();
    for s in table {
        count(&mut rows, &listeners, s);
    }
    rows.sort_by_key(|r| (r.addr.port(), r.addr));
    rows
}

/// Counts `s` in the row of its listener (`rows` in the order of `listeners`): a request sock or SYN_RECV socket
/// in its SYN queue, an established one among its children.
fn count(rows: &mut [ListenerRow], listeners: &[Socket], s: &Socket) {
    let Some(i) = listener_for(listeners, s.local) else {
        return;
    };
    match s.state.normalized() {
        TcpState::SynRecv => rows[i].synq += 1,
        TcpState::Established => rows[i].established += 1,
        _ => {}
    }
}

fn row_of(l: &Socket) -> ListenerRow {
    ListenerRow {
        addr: l.local,
        process: None,
        synq: 0,
        accept: l.recv_q,
        limit: l.backlog_limit,
        established: 0,
        drops: l.drops,
        inode: l.inode,
    }
}

/// The named counters of a TcpExt reading.
pub fn counter_values(t: &TcpExt) -> HashMap<&'static str, u64> {
    COUNTERS.iter().map(|n| (*n, t.get(n).unwrap_or(0))).collect()
}

/// Applies one state change to the established counts of `rows`.
pub fn apply_state(rows: &mut [ListenerRow], listeners: &[Socket], change: &StateChange) {
    let into = change.new == TcpState::Established;
    let out = change.old == TcpState::Established;
    if into == out {
        return;
    }
    let Some(i) = listener_for(listeners, change.tuple.local) else {
        return;
    };
    let Some(row) = rows.iter_mut().find(|r| r.addr == listeners[i].local) else {
        return;
    };
    if into {
        row.established += 1;
    } else {
        row.established = row.established.saturating_sub(1);
    }
}

/// The text table.
pub fn render_text(s: &Snapshot) -> String {
    let mut out = format!(
        "{:<28} {:<20} {:>6} {:>13} {:>7} {:>7}\n",
        "Listen", "Process", "SYN-Q", "Accept/Limit", "Estab", "Drops"
    );
    for r in &s.listeners {
        let process = r
            .process
            .as_ref()
            .map_or("-".to_owned(), |o| format!("{}({})", o.comm, o.pid));
        let limit = r.limit.map_or("?".to_owned(), |n| n.to_string());
        out += &format!(
            "{:<28} {:<20} {:>6} {:>13} {:>7} {:>7}\n",
            r.addr.to_string(),
            process,
            r.synq,
            format!("{}/{limit}", r.accept),
            r.established,
            r.drops.map_or("?".to_owned(), |d| d.to_string())
        );
    }
    let counters: Vec<String> = COUNTERS
        .iter()
        .map(|n| {
            format!(
                "{n} {} (+{})",
                s.counters.get(n).copied().unwrap_or(0),
                s.since_start.get(n).copied().unwrap_or(0)
            )
        })
        .collect();
    out += &format!("TcpExt: {}\n", counters.join(", "));
    if let Some(l) = &s.limits {
        out += &format!(
            "limits: tcp_max_syn_backlog {}, somaxconn {}, tcp_syncookies {}, tcp_abort_on_overflow {}\n",
            l.tcp_max_syn_backlog, l.somaxconn, l.tcp_syncookies, l.tcp_abort_on_overflow
        );
    }
    out
}

/// The view's sources: sock_diag, the owners of listeners, TcpExt since start.
pub struct Sources {
    diag: Diag,
    processes: ProcessMap,
    start: Option<TcpExt>,
}

impl Sources {
    /// Opens sock_diag and takes the TcpExt reading the deltas start from.
    pub fn open() -> anyhow::Result<Sources> {
        Ok(Sources {
            diag: Diag::open()?,
            processes: ProcessMap::new(),
            start: tcpext::read().ok(),
        })
    }

    /// One snapshot of `listeners` with their owners and the counters now.
    pub fn snapshot(&mut self, listeners: Vec<ListenerRow>) -> Snapshot {
        let now = tcpext::read().ok();
        let counters = now.as_ref().map(counter_values).unwrap_or_default();
        let since_start = match (&now, &self.start) {
            (Some(n), Some(s)) => counter_values(&n.since(s)),
            _ => HashMap::new(),
        };
        let mut listeners = listeners;
        let inodes: Vec<u64> = listeners.iter().map(|r| r.inode).collect();
        self.processes.find(&inodes);
        for r in &mut listeners {
            r.process = (r.inode != 0).then(|| self.processes.get(r.inode).cloned()).flatten();
        }
        Snapshot {
            listeners,
            counters,
            since_start,
            limits: tcpext::read_limits().ok(),
        }
    }

    /// Listeners and their SYN queues now, keeping established counts from `previous` (counted now, in the
    /// same dump as the request socks, when there is none).
    pub fn refresh(&mut self, previous: Option<&[ListenerRow]>) -> anyhow::Result<(Vec<Socket>, Vec<ListenerRow>)> {
        let listeners = self.diag.dump(&Query::listeners())?;
        let mut rows: Vec<ListenerRow> = listeners.iter().map(row_of).collect();
        // One dump of the request socks for every listener, since each dump walks the whole table in the
        // kernel; IPv6 is walked only when an IPv6 listener can hold request socks.
        let families = if listeners.iter().any(Socket::is_v6) {
            Families::Both
        } else {
            Families::V4
        };
        let mut states = vec![TcpState::SynRecv, TcpState::NewSynRecv];
        if previous.is_none() {
            states.push(TcpState::Established);
        }
        // Only the listeners' ports come back: the kernel still walks the table, but sends none of the rest.
        let ports: Vec<u16> = listeners.iter().map(|l| l.local.port()).collect();
        self.diag
            .dump_with(&Query::in_states(&states).of(families).on_ports(&ports), |s| {
                count(&mut rows, &listeners, &s)
            })?;
        if let Some(previous) = previous {
            for r in &mut rows {
                r.established = previous.iter().find(|p| p.addr == r.addr).map_or(0, |p| p.established);
            }
        }
        rows.sort_by_key(|r| (r.addr.port(), r.addr));
        Ok((listeners, rows))
    }
}

/// Runs `observer queues`.
pub async fn run(args: &QueuesArgs) -> anyhow::Result<()> {
    let mut sources = Sources::open()?;
    let (_, rows) = sources.refresh(None)?;
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal() && !args.json;
    let print = |s: &Snapshot| -> anyhow::Result<()> {
        let mut out = stdout.lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        } else {
            if tty {
                // Redraw in place on a terminal.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(out, "{}", render_text(s))?;
        }
        out.flush()?;
        Ok(())
    };
    if args.once {
        return print(&sources.snapshot(rows));
    }

    live(args, sources, rows, print).await
}

async fn live(
    args: &QueuesArgs,
    mut sources: Sources,
    mut rows: Vec<ListenerRow>,
    print: impl Fn(&Snapshot) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    crate::sys::preflight::check_privileges()
        .context("the live view follows the kernel's state changes (--once does not)")?;
    let mut capture = Capture::load(&Config::default(), RingSizes::sockets_only(), false)?;
    let netns = sockprogs::current_netns().map_err(CaptureError::from)?;
    sockprogs::attach_socket_events(&mut capture, netns)?;
    let ring = capture.take_sock_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with tokio")?;
    let (mut listeners, _) = sources.refresh(Some(&rows))?;
    privileges::drop_all_but(privileges::Needs {
        processes: true,
        netlink_tc: false,
    })?;
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
    let mut printed = 0u64;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (l, r) = sources.refresh(Some(&rows))?;
                listeners = l;
                rows = r;
                print(&sources.snapshot(rows.clone()))?;
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    if let Ok(Event::Sock(rec)) = events::decode(&item)
                        && let Some(Input::State(change)) = Input::from_sock(&rec, |_, r| r.to_string())
                    {
                        apply_state(&mut rows, &listeners, &change);
                    }
                }
                guard.clear_ready();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    capture.detach()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::link::Tuple;

    fn sock(local: &str, remote: &str, state: TcpState, recv_q: u32) -> Socket {
        Socket {
            recv_q,
            backlog_limit: (state == TcpState::Listen).then_some(4),
            ..Socket::new(local.parse().unwrap(), remote.parse().unwrap(), state)
        }
    }

    #[test]
    fn rows_count_request_socks_and_children_per_listener() {
        let table = vec![
            sock("0.0.0.0:80", "0.0.0.0:0", TcpState::Listen, 5),
            sock("10.0.0.1:81", "0.0.0.0:0", TcpState::Listen, 0),
            sock("10.0.0.1:80", "10.0.0.2:4000", TcpState::SynRecv, 0),
            sock("10.0.0.1:80", "10.0.0.2:4001", TcpState::NewSynRecv, 0),
            sock("10.0.0.1:80", "10.0.0.2:4002", TcpState::Established, 0),
            sock("10.0.0.1:81", "10.0.0.2:4003", TcpState::Established, 0),
            sock("10.0.0.1:81", "10.0.0.2:4004", TcpState::TimeWait, 0),
            sock("10.0.0.1:5000", "10.0.0.2:80", TcpState::Established, 0),
        ];
        let rows = rows_from_table(&table);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].synq, rows[0].accept, rows[0].limit, rows[0].established),
            (2, 5, Some(4), 1)
        );
        assert_eq!((rows[1].synq, rows[1].established), (0, 1));
    }

    #[test]
    fn state_changes_move_the_established_count() {
        let listeners = vec![sock("0.0.0.0:80", "0.0.0.0:0", TcpState::Listen, 0)];
        let mut rows = rows_from_table(&listeners);
        let change = |old, new| StateChange {
            ts_ns: 0,
            tuple: Tuple::new("10.0.0.1:80".parse().unwrap(), "10.0.0.2:4000".parse().unwrap()),
            old,
            new,
        };
        apply_state(&mut rows, &listeners, &change(TcpState::SynRecv, TcpState::Established));
        apply_state(&mut rows, &listeners, &change(TcpState::SynRecv, TcpState::Established));
        apply_state(
            &mut rows,
            &listeners,
            &change(TcpState::Established, TcpState::CloseWait),
        );
        apply_state(&mut rows, &listeners, &change(TcpState::CloseWait, TcpState::LastAck));
        assert_eq!(rows[0].established, 1);
    }
}
