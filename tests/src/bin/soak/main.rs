//! `cargo xtask soak [--minutes N]`: the real agent on one end of a veth pair for N minutes (default 10) under a
//! steady ~50,000 packets/s, with short connections opening and closing all the time ([`load`]). One row a
//! minute: the packet rate achieved (from the veth's own counters), connections opened, the agent's RSS, CPU
//! and stdout lines; at the end its exit report. It fails when RSS grows past the rule or anything was lost
//! ([`rule`]).

mod load;
mod rule;

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{
    agent::{self, Drained, Finished},
    netns::{self, Pair},
    procstat,
};

use load::Load;
use rule::{End, Rss};

/// Packets per second asked of the link (both directions of the veth together).
const TARGET_PPS: f64 = 50_000.0;
/// Packets one short connection costs, for the first guess at the long-lived connections' share.
const PACKETS_PER_CONNECTION: f64 = 9.0;
/// The warm-up reading that a one-minute run compares its end with.
const WARMUP: Duration = Duration::from_secs(20);
/// How long the agent may take to attach.
const AGENT_START: Duration = Duration::from_secs(30);
/// Time between the traffic stopping and the agent's SIGINT, for the last records to be printed.
const QUIESCE: Duration = Duration::from_secs(2);

/// Set by SIGINT or SIGTERM: the run ends early, cleaning up as on any other end.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// What the command line asks for.
struct Options {
    minutes: u32,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options { minutes: 10 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                let n = args.next().context("--minutes needs a number")?;
                opts.minutes = n
                    .parse()
                    .with_context(|| format!("--minutes {n}: not a whole number"))?;
                if opts.minutes == 0 {
                    bail!("--minutes must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!("usage: soak [--minutes N]  (default 10)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(Ok(why)) => {
            println!("soak: passed: {why}");
            ExitCode::SUCCESS
        }
        Ok(Err(reason)) => {
            println!("soak: FAILED: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("soak: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's process counters at one moment, with the link's.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    packets: u64,
    cpu_ms: f64,
    opened: u64,
    lines: u64,
}

/// The namespaces, the agent and the traffic of one run; dropped in reverse order, the namespaces last.
struct Rig {
    pair: Pair,
    agent: Drained,
}

impl Rig {
    fn read(&self, load: &Load) -> anyhow::Result<Reading> {
        let (rx, tx) = self.pair.b.link_packets(&self.pair.b_if)?;
        Ok(Reading {
            at: Instant::now(),
            packets: rx + tx,
            cpu_ms: procstat::cpu_ms(self.agent.pid())?,
            opened: load.opened(),
            lines: self.agent.lines(),
        })
    }

    fn rss(&self, at: String) -> anyhow::Result<Rss> {
        Ok(Rss {
            at,
            kib: procstat::status_kib(self.agent.pid(), "VmRSS:")?,
        })
    }
}

fn run(opts: Options) -> anyhow::Result<Result<String, String>> {
    observer::sys::preflight::check_privileges()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let bin = agent::beside_exe()?;
    let pair = Pair::new("soak", 232)?;
    // The clients close first: let them reuse their TIME_WAIT ports, as a busy client host would.
    netns::run(pair.a.command("sysctl").args([
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ]))?;
    let iface = pair.b_if.clone();
    let args = ["watch", "--iface", iface.as_str()];
    let agent = Drained::start(&pair.b, &bin, &args, tests::patient(AGENT_START))?;
    let rig = Rig { pair, agent };
    let comm = procstat::read(rig.agent.pid(), "comm")?;
    if comm.trim() != "observer" {
        bail!("pid {} is {:?}, not observer", rig.agent.pid(), comm.trim());
    }
    println!(
        "soak: `observer {}` in {} for {} min; {:.0} packets/s asked of the veth pair {}/{} ({} short connections/s \
         and paced rounds on long-lived ones), measured from {}'s rx+tx counters",
        args.join(" "),
        rig.pair.b.name,
        opts.minutes,
        TARGET_PPS,
        rig.pair.a_if,
        rig.pair.b_if,
        load::CHURN_RATE,
        rig.pair.b_if
    );
    let load = Load::start(
        &rig.pair,
        (TARGET_PPS - load::CHURN_RATE * PACKETS_PER_CONNECTION) / 2.0,
    )?;
    let (minutes, warmup, interrupted) = soak(&rig, &load, opts.minutes)?;
    let failed = load.failed();
    drop(load);
    thread::sleep(QUIESCE);
    let mut rig = rig;
    let lines = rig.agent.lines();
    let finished = rig.agent.stop(libc::SIGINT)?;
    let end = report(&finished, lines, failed);
    if let Some(after) = interrupted {
        return Ok(Err(format!("interrupted after {} s", after.as_secs())));
    }
    let end = match end {
        Ok(end) => end,
        Err(reason) => return Ok(Err(reason)),
    };
    if minutes.len() == 1 {
        println!(
            "(one minute: the RSS rule compares the end of minute 1 with the warm-up reading at {} s)",
            WARMUP.as_secs()
        );
    }
    Ok(rule::verdict(&minutes, warmup.as_ref(), &end))
}

/// Runs the minutes, steering the long-lived connections' rate towards [`TARGET_PPS`] each second and printing
/// a row each minute; returns the minutes' RSS readings, the warm-up one, and when Ctrl-C came if it did.
fn soak(rig: &Rig, load: &Load, minutes: u32) -> anyhow::Result<(Vec<Rss>, Option<Rss>, Option<Duration>)> {
    println!(
        "{:>6} {:>9} {:>13} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "minute", "pkts/s", "pkts/s 1s", "conns", "RSS MiB", "cpu ms/s", "cpu us/pkt", "lines", "failed"
    );
    let start = Instant::now();
    let first = rig.read(load)?;
    let (mut minute_start, mut last) = (first, first);
    let mut rows = Vec::new();
    let mut warmup = None;
    let (mut low, mut high) = (f64::MAX, 0.0f64);
    let mut failed_before = load.failed();
    for second in 1..=u64::from(minutes) * 60 {
        let due = start + Duration::from_secs(second);
        while let Some(left) = due.checked_duration_since(Instant::now()) {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Ok((rows, warmup, Some(start.elapsed())));
            }
            thread::sleep(left.min(Duration::from_millis(100)));
        }
        let now = rig.read(load)?;
        let secs = (now.at - last.at).as_secs_f64();
        let pps = (now.packets - last.packets) as f64 / secs;
        (low, high) = (low.min(pps), high.max(pps));
        if pps > 0.0 {
            let factor = (TARGET_PPS / pps).sqrt().clamp(0.8, 1.25);
            load.set_stream_rate((load.stream_rate() * factor).clamp(100.0, TARGET_PPS));
        }
        last = now;
        if minutes == 1 && second == WARMUP.as_secs() {
            warmup = Some(rig.rss(format!("warm-up at {} s", WARMUP.as_secs()))?);
        }
        if second % 60 == 0 {
            let minute = second / 60;
            let secs = (now.at - minute_start.at).as_secs_f64();
            let packets = (now.packets - minute_start.packets) as f64;
            let cpu = now.cpu_ms - minute_start.cpu_ms;
            let rss = rig.rss(format!("minute {minute}"))?;
            let failed = load.failed();
            println!(
                "{:>6} {:>9.0} {:>13} {:>10} {:>9.1} {:>9.1} {:>10.2} {:>10} {:>9}",
                minute,
                packets / secs,
                format!("{:.0}-{:.0}", low, high),
                now.opened - minute_start.opened,
                rss.kib as f64 / 1024.0,
                cpu / secs,
                cpu * 1e3 / packets.max(1.0),
                now.lines - minute_start.lines,
                failed - failed_before
            );
            rows.push(rss);
            (minute_start, low, high, failed_before) = (now, f64::MAX, 0.0, failed);
        }
    }
    Ok((rows, warmup, None))
}

/// Prints the agent's exit report and the lines it printed against its records; the losses it reports, or why
/// they cannot be read.
fn report(finished: &Finished, lines: u64, failed: u64) -> Result<End, String> {
    println!("agent exit report (status {:?}):", finished.code);
    for line in &finished.stderr {
        println!("  {line}");
    }
    let count = |prefix: &str, word: &str| {
        finished
            .count_before(prefix, word)
            .ok_or_else(|| format!("the agent's exit report has no `{prefix} N {word}`"))
    };
    let dropped = finished
        .stderr
        .iter()
        .find_map(|l| l.strip_prefix("dropped records (ring buffer full): "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or("the agent's exit report has no `dropped records (ring buffer full): N`")?;
    let (emitted, printed) = (count("records:", "emitted")?, count("records:", "printed")?);
    let (sock_emitted, sock_lost) = (count("socket events:", "emitted")?, count("socket events:", "lost")?);
    println!(
        "lines printed by the agent: {lines}; records: {emitted} emitted, {printed} printed ({}), \
         {} other lines (analysis, state, neighbour); socket events: {sock_emitted} emitted, {sock_lost} lost; \
         {failed} connections or rounds of the load failed",
        if printed == emitted {
            "all".to_owned()
        } else {
            format!("{} not printed", emitted.abs_diff(printed))
        },
        lines.saturating_sub(printed)
    );
    Ok(End {
        code: finished.code,
        dropped_records: dropped,
        socket_events_lost: sock_lost,
    })
}
