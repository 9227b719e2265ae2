//! `cargo xtask bench`: figures measured against a baseline in the same run, printed as ratios, never asserted.
//!
//! Packets: kernel time per packet of the real programs (BPF_PROG_TEST_RUN, many repetitions), next to an empty
//! TC program. Records are reserved and then discarded in this mode (`Config::discard`), so the ring never fills
//! and every repetition pays for the reservation.
//!
//! Sockets ([`sockets`]): the full socket table with many connections open, ours against `ss` and `netstat`; the
//! live views' refresh against the full table; the agent's idle CPU and memory.
//!
//! `cargo xtask bench -- [--packets-only | --sockets-only] [--conns 10000,50000] [--runs 5]`

mod sockets;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};

use observer_common::Config;
use tests::{
    kernel::{Kernel, Program},
    oracle,
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

struct Case {
    program: Program,
    frame: &'static str,
    bytes: Vec<u8>,
    /// Goal as a multiple of the empty program, if any.
    goal: Option<f64>,
    /// Run with `--write`'s configuration: the header bytes copied into the record.
    snap: bool,
}

/// What the command line asks for.
struct Options {
    packets: bool,
    sockets: bool,
    socket: sockets::Options,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut opts = Options {
        packets: true,
        sockets: true,
        socket: sockets::Options::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--packets-only" => opts.sockets = false,
            "--sockets-only" => opts.packets = false,
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
            "-h" | "--help" => {
                println!("usage: bench [--packets-only | --sockets-only] [--conns 10000,50000] [--runs 5]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if !opts.packets && !opts.sockets {
        bail!("--packets-only and --sockets-only exclude each other");
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
    if opts.packets {
        packets()?;
    }
    if opts.sockets {
        if opts.packets {
            println!();
        }
        sockets::run(&opts.socket)?;
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
            program: Program::TcIngress,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: Some(4.0),
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
            goal: Some(1.5),
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
    let empty = ns[0];
    println!("observer bench: BPF_PROG_TEST_RUN, {REPEAT} repetitions x {ROUNDS} rounds, median kernel ns per packet");
    println!("{:<12} {:<18} {:>9} {:>9}  goal", "program", "frame", "ns", "x empty");
    for (case, ns) in cases.iter().zip(&ns) {
        let ratio = ns / empty;
        let goal = match case.goal {
            Some(g) if ratio <= g => format!("<= {g}x: met"),
            Some(g) => format!("<= {g}x: MISSED"),
            None => String::new(),
        };
        println!(
            "{:<12} {:<18} {:>9.1} {:>8.2}x  {goal}",
            name(case.program),
            case.frame,
            ns,
            ratio
        );
    }
    Ok(())
}

fn name(p: Program) -> &'static str {
    match p {
        Program::TcIngress => "tc_ingress",
        Program::TcEgress => "tc_egress",
        Program::Xdp => "xdp_ingress",
        Program::TcEmpty => "tc_empty",
    }
}

fn median_ns(s: &mut [Duration]) -> f64 {
    s.sort();
    s[s.len() / 2].as_nanos() as f64
}
