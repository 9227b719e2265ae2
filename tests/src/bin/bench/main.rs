//! `cargo xtask bench`: figures measured against a baseline in the same run, printed as ratios, never asserted.
//!
//! Packets: kernel time per packet of the real programs (BPF_PROG_TEST_RUN, many repetitions), next to an empty
//! TC program and a floor program that emits a record without parsing anything. Records are reserved and then discarded in this mode (`Config::discard`), so the ring never fills
//! and every repetition pays for the reservation.
//!
//! Sockets ([`sockets`]): the full socket table with many connections open, ours against `ss` and `netstat`; the
//! live views' refresh against the full table; the agent's idle CPU and memory.
//!
//! Tables ([`tables`]): the same table sizes, whole processes: `observer netstat --ss`, `observer netstat` and
//! `observer queues --once` against `ss -tan`, `netstat -ant` and `ss -ltn`, wall time and peak RSS.
//!
//! Wire and churn ([`pipeline`]): one veth pair, the same traffic (iperf3 with small segments; nginx and wrk, one
//! connection per request) under no capture, tcpdump and the real agent in each of its modes.
//!
//! `cargo xtask bench -- [--packets-only] [--sockets-only] [--tables-only] [--wire-only] [--churn-only]
//! [--conns 10000,50000] [--runs 5] [--seconds 8]`: one or more `--X-only` pick sections; none runs them all.

mod pipeline;
mod sockets;
mod tables;

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};

use observer_common::Config;
use tests::{
    kernel::{Kernel, Program},
    oracle,
};

/// Set by SIGINT or SIGTERM: the run ends at the next check, cleaning up (namespaces, servers) as on any error.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Fails once Ctrl-C or SIGTERM has come.
fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

/// A goal as a multiple of one of the baselines.
#[derive(Clone, Copy)]
enum Goal {
    /// At most this many times the empty program.
    Empty(f64),
    /// At most this many times the floor program.
    Floor(f64),
}

struct Case {
    program: Program,
    frame: &'static str,
    bytes: Vec<u8>,
    goal: Option<Goal>,
    /// Run with `--write`'s configuration: the header bytes copied into the record.
    snap: bool,
}

/// What the command line asks for.
struct Options {
    packets: bool,
    sockets: bool,
    tables: bool,
    wire: bool,
    churn: bool,
    socket: sockets::Options,
    pipeline: pipeline::Options,
}

const USAGE: &str = "usage: bench [--packets-only] [--sockets-only] [--tables-only] [--wire-only] [--churn-only] \
                     [--conns 10000,50000] [--runs 5] [--seconds 8]";

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        packets: false,
        sockets: false,
        tables: false,
        wire: false,
        churn: false,
        socket: sockets::Options::default(),
        pipeline: pipeline::Options { seconds: 8 },
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--packets-only" => opts.packets = true,
            "--sockets-only" => opts.sockets = true,
            "--tables-only" => opts.tables = true,
            "--wire-only" => opts.wire = true,
            "--churn-only" => opts.churn = true,
            "--conns" => {
                let list = args.next().context("--conns needs a list such as 10000,50000")?;
                opts.socket.sizes = list
                    .split(',')
                    .map(|n| n.trim().replace('_', "").parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--conns {list}"))?;
            }
            "--runs" => {
                let n = args.next().context("--runs needs a number")?;
                opts.socket.runs = n.parse().with_context(|| format!("--runs {n}"))?;
                if opts.socket.runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--seconds" => {
                let n = args.next().context("--seconds needs a number")?;
                opts.pipeline.seconds = n.parse().with_context(|| format!("--seconds {n}"))?;
                if opts.pipeline.seconds == 0 {
                    bail!("--seconds must be at least 1");
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !(opts.packets || opts.sockets || opts.tables || opts.wire || opts.churn) {
        (opts.packets, opts.sockets, opts.tables, opts.wire, opts.churn) = (true, true, true, true, true);
    }
    Ok(opts)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Options) -> anyhow::Result<()> {
    observer::sys::preflight::check_privileges()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let sections: [(bool, &dyn Fn() -> anyhow::Result<()>); 5] = [
        (opts.packets, &packets),
        (opts.sockets, &|| sockets::run(&opts.socket)),
        (opts.tables, &|| tables::run(&opts.socket.sizes, opts.socket.runs)),
        (opts.wire, &|| pipeline::wire_scenario(&opts.pipeline)),
        (opts.churn, &|| pipeline::churn_scenario(&opts.pipeline)),
    ];
    let mut first = true;
    for (wanted, section) in sections {
        if !wanted {
            continue;
        }
        check_interrupted()?;
        if !first {
            println!();
        }
        first = false;
        section()?;
    }
    Ok(())
}

fn packets() -> anyhow::Result<()> {
    let config = Config {
        discard: 1,
        ..Config::default()
    };
    let mut kernels = [Kernel::load(&config)?, Kernel::load(&Config { snap: 1, ..config })?];
    let syn = oracle::syn_with_all_options();
    let cases = [
        Case {
            program: Program::TcEmpty,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: None,
            snap: false,
        },
        Case {
            program: Program::TcFloor,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: None,
            snap: false,
        },
        Case {
            program: Program::TcIngress,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: Some(Goal::Floor(1.5)),
            snap: false,
        },
        Case {
            program: Program::TcIngress,
            frame: "pure ACK",
            bytes: oracle::pure_ack(),
            goal: None,
            snap: false,
        },
        Case {
            program: Program::TcIngress,
            frame: "ARP request",
            bytes: oracle::arp_request(),
            goal: None,
            snap: false,
        },
        Case {
            program: Program::TcIngress,
            frame: "non-IP frame",
            bytes: oracle::non_ip_frame(),
            goal: Some(Goal::Empty(1.3)),
            snap: false,
        },
        Case {
            program: Program::Xdp,
            frame: "SYN with options",
            bytes: syn,
            goal: None,
            snap: false,
        },
        Case {
            program: Program::Xdp,
            frame: "non-IP frame",
            bytes: oracle::non_ip_frame(),
            goal: None,
            snap: false,
        },
        Case {
            program: Program::TcIngress,
            frame: "SYN, --write",
            bytes: oracle::syn_with_all_options(),
            goal: None,
            snap: true,
        },
        Case {
            program: Program::TcIngress,
            frame: "ARP, --write",
            bytes: oracle::arp_request(),
            goal: None,
            snap: true,
        },
        Case {
            program: Program::Xdp,
            frame: "SYN, --write",
            bytes: oracle::syn_with_all_options(),
            goal: None,
            snap: true,
        },
    ];
    // Rounds interleave the cases so that a noisy moment hits all of them; each figure is a median.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (case, s) in cases.iter().zip(&mut samples) {
            let kernel = &mut kernels[usize::from(case.snap)];
            s.push(kernel.run(case.program, &case.bytes, REPEAT)?.duration);
        }
    }
    let ns: Vec<f64> = samples.iter_mut().map(|s| median_ns(s)).collect();
    let (empty, floor) = (ns[0], ns[1]);
    println!("observer bench: BPF_PROG_TEST_RUN, {REPEAT} repetitions x {ROUNDS} rounds, median kernel ns per packet");
    println!(
        "{:<12} {:<18} {:>9} {:>9} {:>9}  goal",
        "program", "frame", "ns", "x empty", "x floor"
    );
    for (case, ns) in cases.iter().zip(&ns) {
        let goal = match case.goal {
            Some(Goal::Empty(g)) => verdict(ns / empty <= g, &format!("<= {g}x empty")),
            Some(Goal::Floor(g)) => verdict(ns / floor <= g, &format!("<= {g}x floor")),
            None => String::new(),
        };
        println!(
            "{:<12} {:<18} {:>9.1} {:>8.2}x {:>8.2}x  {goal}",
            name(case.program),
            case.frame,
            ns,
            ns / empty,
            ns / floor
        );
    }
    println!("(floor: tc_floor reads the clock and copies a TCP record into the ring, parsing nothing)");
    Ok(())
}

fn name(p: Program) -> &'static str {
    match p {
        Program::TcIngress => "tc_ingress",
        Program::TcEgress => "tc_egress",
        Program::Xdp => "xdp_ingress",
        Program::TcEmpty => "tc_empty",
        Program::TcFloor => "tc_floor",
    }
}

/// `<goal>: met` or `<goal>: MISSED`.
fn verdict(met: bool, goal: &str) -> String {
    format!("{goal}: {}", if met { "met" } else { "MISSED" })
}

fn median_ns(s: &mut [Duration]) -> f64 {
    s.sort();
    s[s.len() / 2].as_nanos() as f64
}
