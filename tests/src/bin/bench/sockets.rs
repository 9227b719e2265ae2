//! The socket-table section: with N connections open in a namespace, the full table through sock_diag netlink
//! and through /proc, next to `ss -tan`, `netstat -ant` and `cat /proc/net/tcp` run in the same namespace and
//! the same rounds; the live views' per-second refresh next to the full table; the real agent's idle CPU and
//! memory with the largest table open.
//!
//! Every figure is a median over rounds that interleave the sources, so a noisy moment hits all of them.

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use observer::sys::sockets::{
    TcpState,
    diag::{Diag, Query},
    procfs, tcpext,
};
use tests::{
    agent::{self, Drained},
    conns::Conns,
    netns::Netns,
    procstat,
};

/// A full table at most this fraction of `ss -tan`'s time.
const TABLE_GOAL: f64 = 0.3;
/// The live refresh at least this many times cheaper than a full table.
const REFRESH_GOAL: f64 = 10.0;
/// How long an agent must be idle while its CPU time is sampled.
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// How long an agent may take to load and print its first line.
const AGENT_START: Duration = Duration::from_secs(30);
/// Time after the first line before sampling starts.
const SETTLE: Duration = Duration::from_secs(2);

/// What to measure.
pub struct Options {
    /// Connection counts, one namespace each; the agent runs in the largest.
    pub sizes: Vec<usize>,
    /// Rounds per figure (the median is printed).
    pub runs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: vec![10_000, 50_000],
            runs: 5,
        }
    }
}

/// One way to read the table, or a part of the live refresh.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Ss,
    Netstat,
    CatProc,
    OursProc,
    OursNetlink,
    OursRefresh,
    RefreshListeners,
    RefreshSynRecv,
    RefreshCounters,
    SynRecvOnce,
}

impl Source {
    /// In the order printed; the index is the discriminant.
    const ALL: [Source; 10] = [
        Source::Ss,
        Source::Netstat,
        Source::CatProc,
        Source::OursProc,
        Source::OursNetlink,
        Source::OursRefresh,
        Source::RefreshListeners,
        Source::RefreshSynRecv,
        Source::RefreshCounters,
        Source::SynRecvOnce,
    ];

    fn label(self) -> &'static str {
        match self {
            Source::Ss => "ss -tan",
            Source::Netstat => "netstat -ant",
            Source::CatProc => "cat /proc/net/tcp",
            Source::OursProc => "observer /proc table",
            Source::OursNetlink => "observer netlink table",
            Source::OursRefresh => "observer live refresh",
            Source::RefreshListeners => "  = listeners dump",
            Source::RefreshSynRecv => "  + SYN_RECV per port",
            Source::RefreshCounters => "  + TcpExt and limits",
            Source::SynRecvOnce => "  (SYN_RECV all ports)",
        }
    }

    /// The external command, for the tools.
    fn command(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Source::Ss => Some(("ss", &["-tan"])),
            Source::Netstat => Some(("netstat", &["-ant"])),
            Source::CatProc => Some(("cat", &["/proc/net/tcp"])),
            _ => None,
        }
    }

    /// Header lines the tool prints before the rows.
    fn header_lines(self) -> usize {
        match self {
            Source::Netstat => 2,
            Source::Ss | Source::CatProc => 1,
            _ => 0,
        }
    }

    /// Whether the source reads the whole table (and so should see every socket).
    fn whole_table(self) -> bool {
        matches!(
            self,
            Source::Ss | Source::Netstat | Source::CatProc | Source::OursProc | Source::OursNetlink
        )
    }

    /// Reads once; returns the rows seen (counted only when `count` for the tools) and the wall time. Runs on a
    /// thread inside the namespace: the tools are forked from it and so start there too. `ports` are the
    /// listening ports.
    fn take(self, count: bool, ports: &[u16]) -> anyhow::Result<(usize, Duration)> {
        if let Some((program, args)) = self.command() {
            let mut cmd = Command::new(program);
            cmd.args(args).stdin(Stdio::null()).stderr(Stdio::piped());
            cmd.stdout(if count { Stdio::piped() } else { Stdio::null() });
            let start = Instant::now();
            let out = cmd.output().with_context(|| format!("running {program}"))?;
            let took = start.elapsed();
            if !out.status.success() {
                bail!(
                    "{program} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
            return Ok((lines.saturating_sub(self.header_lines()), took));
        }
        let start = Instant::now();
        let rows = match self {
            Source::OursProc => procfs::read_table()?.len(),
            Source::OursNetlink => Diag::open()?.dump(&Query::all())?.len(),
            Source::OursRefresh => refresh()?,
            Source::RefreshListeners => listener_ports(&mut Diag::open()?)?.len(),
            Source::RefreshSynRecv => syn_recv(&mut Diag::open()?, ports)?,
            Source::RefreshCounters => counters()?,
            _ => Diag::open()?
                .dump(&Query::in_states(&[TcpState::SynRecv, TcpState::NewSynRecv]))?
                .len(),
        };
        Ok((rows, start.elapsed()))
    }
}

/// What `observer queues` does each second instead of reading the full table: the listeners, one dump of the
/// request socks for all of them, TcpExt, the limits and the owners. Returns the listener rows.
/// The sources stay open across runs as in the agent, so the owners of the listeners are found once.
fn refresh() -> anyhow::Result<usize> {
    thread_local! {
        static SOURCES: std::cell::RefCell<Option<observer::cmd::queues::Sources>> = const { std::cell::RefCell::new(None) };
    }
    SOURCES.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(observer::cmd::queues::Sources::open()?);
        }
        let sources = slot.as_mut().expect("just opened");
        let (_, rows) = sources.refresh(Some(&[]))?;
        Ok(sources.snapshot(rows).listeners.len())
    })
}

/// The listening ports, each once.
fn listener_ports(diag: &mut Diag) -> anyhow::Result<Vec<u16>> {
    let mut ports: Vec<u16> = diag.dump(&Query::listeners())?.iter().map(|l| l.local.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// One SYN_RECV dump per port; the rows found.
fn syn_recv(diag: &mut Diag, ports: &[u16]) -> anyhow::Result<usize> {
    let mut rows = 0;
    for &port in ports {
        rows += diag.dump(&Query::syn_recv(port))?.len();
    }
    Ok(rows)
}

/// Reads TcpExt and the limits; no rows.
fn counters() -> anyhow::Result<usize> {
    tcpext::read()?;
    tcpext::read_limits()?;
    Ok(0)
}

/// Median time and rows seen, per source.
struct Figures {
    rows: Vec<usize>,
    median: Vec<Duration>,
    ports: usize,
}

/// Takes every source `runs` times, interleaved, on the current thread (which must be in the namespace).
fn measure(runs: usize) -> anyhow::Result<Figures> {
    let ports = listener_ports(&mut Diag::open()?)?;
    // The untimed first round counts the rows each source sees (the tools' output piped) and warms the caches.
    let rows = Source::ALL
        .iter()
        .map(|s| s.take(true, &ports).map(|(rows, _)| rows).with_context(|| s.label()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut samples = vec![Vec::with_capacity(runs); Source::ALL.len()];
    for _ in 0..runs {
        for (s, out) in Source::ALL.iter().zip(&mut samples) {
            out.push(s.take(false, &ports).with_context(|| s.label())?.1);
        }
    }
    let median = samples
        .iter_mut()
        .map(|s| Duration::from_nanos(crate::median_ns(s) as u64))
        .collect();
    Ok(Figures {
        rows,
        median,
        ports: ports.len(),
    })
}

/// Runs the section.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let largest = opts.sizes.iter().copied().max();
    for &n in &opts.sizes {
        let start = Instant::now();
        let conns = Conns::open("bench", n).with_context(|| format!("opening {n} connections"))?;
        let opened = start.elapsed();
        println!(
            "socket table: {n} connections = {} established sockets + {} listeners = {} sockets in the table \
             (opened in {:.1} s by {} processes); median of {} runs, wall time",
            2 * n,
            conns.listeners().len(),
            conns.sockets(),
            opened.as_secs_f64(),
            conns.pids().len(),
            opts.runs
        );
        let runs = opts.runs;
        let figures = conns.ns().enter(move || measure(runs))??;
        print_table(&figures, conns.sockets());
        if Some(n) == largest {
            println!();
            agents(&conns)?;
        }
        let start = Instant::now();
        drop(conns);
        println!("(closed in {:.1} s)", start.elapsed().as_secs_f64());
        println!();
    }
    Ok(())
}

fn print_table(f: &Figures, expected: usize) {
    let ms = |s: Source| f.median[s as usize].as_secs_f64() * 1e3;
    let (ss, netstat, table) = (ms(Source::Ss), ms(Source::Netstat), ms(Source::OursNetlink));
    println!(
        "{:<24} {:>8} {:>10} {:>8} {:>10}  goal",
        "source", "rows", "ms", "x ss", "x netstat"
    );
    for s in Source::ALL {
        let t = ms(s);
        let rows = f.rows[s as usize];
        let goal = match s {
            Source::OursNetlink => verdict(t / ss <= TABLE_GOAL, &format!("<= {TABLE_GOAL}x ss")),
            Source::OursRefresh => {
                let cheaper = table / t;
                format!(
                    "{cheaper:.1}x cheaper than the netlink table; {}",
                    verdict(cheaper >= REFRESH_GOAL, &format!(">= {REFRESH_GOAL}x"))
                )
            }
            Source::RefreshSynRecv => format!("{} dumps, each a walk of the whole table", f.ports),
            Source::SynRecvOnce => "one dump for every port, counted per listener after".to_string(),
            _ => String::new(),
        };
        // Every whole-table source should see every socket (cat reads tcp only, which here is all of them).
        let note = if s.whole_table() && rows != expected {
            format!(" (expected {expected} rows: wrong namespace?)")
        } else {
            String::new()
        };
        println!(
            "{:<24} {:>8} {:>10.2} {:>7.3}x {:>9.3}x  {goal}{note}",
            s.label(),
            rows,
            t,
            t / ss,
            t / netstat
        );
    }
}

fn verdict(met: bool, goal: &str) -> String {
    format!("{goal}: {}", if met { "met" } else { "MISSED" })
}

/// What one agent cost.
struct AgentCost {
    ready_after: Duration,
    cpu_ms_per_s: f64,
    stat_ms_per_s: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

/// Starts `observer <args>` in `ns`, waits for its first line, lets it settle, then samples its CPU time over an
/// idle window and reads its memory.
fn agent_cost(ns: &Netns, bin: &std::path::Path, args: &[&str]) -> anyhow::Result<AgentCost> {
    let running = Drained::start(ns, bin, args, AGENT_START)?;
    thread::sleep(SETTLE);
    let pid = running.pid();
    let comm = procstat::read(pid, "comm")?;
    if comm.trim() != "observer" {
        bail!("pid {pid} is {:?}, not observer (did ip netns exec fork?)", comm.trim());
    }
    let (cpu0, stat0, t0) = (procstat::cpu_ns(pid)?, procstat::cpu_ms(pid)?, Instant::now());
    thread::sleep(IDLE_WINDOW);
    let (cpu1, stat1, secs) = (
        procstat::cpu_ns(pid)?,
        procstat::cpu_ms(pid)?,
        t0.elapsed().as_secs_f64(),
    );
    Ok(AgentCost {
        ready_after: running.ready_after,
        cpu_ms_per_s: cpu1.saturating_sub(cpu0) as f64 / 1e6 / secs,
        stat_ms_per_s: (stat1 - stat0) / secs,
        rss_kib: procstat::status_kib(pid, "VmRSS:")?,
        hwm_kib: procstat::status_kib(pid, "VmHWM:")?,
    })
}

/// The agent rows: `observer queues` (when this build has it) and `observer watch -i lo`.
fn agents(conns: &Conns) -> anyhow::Result<()> {
    let bin = agent::beside_exe()?;
    let help = tests::netns::run(Command::new(&bin).arg("--help")).context("observer --help")?;
    let mut runs: Vec<&[&str]> = Vec::new();
    if help.lines().any(|l| l.split_whitespace().next() == Some("queues")) {
        runs.push(&["queues"]);
    } else {
        println!("(observer queues is not in `observer --help` yet: measuring watch only)");
    }
    runs.push(&["watch", "-i", "lo"]);
    println!(
        "agent with {} sockets open and idle, {} s window",
        conns.sockets(),
        IDLE_WINDOW.as_secs()
    );
    println!(
        "{:<24} {:>9} {:>10} {:>11} {:>11} {:>12}",
        "command", "cpu ms/s", "stat ms/s", "VmRSS MiB", "VmHWM MiB", "first line s"
    );
    for args in runs {
        let label = format!("observer {}", args.join(" "));
        match agent_cost(conns.ns(), &bin, args) {
            Ok(c) => println!(
                "{label:<24} {:>9.2} {:>10.1} {:>11.1} {:>11.1} {:>12.2}",
                c.cpu_ms_per_s,
                c.stat_ms_per_s,
                c.rss_kib as f64 / 1024.0,
                c.hwm_kib as f64 / 1024.0,
                c.ready_after.as_secs_f64()
            ),
            Err(e) => println!("{label:<24} failed: {e:#}"),
        }
    }
    Ok(())
}
