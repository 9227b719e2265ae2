//! `cargo xtask bench`: kernel time per packet of the real programs (BPF_PROG_TEST_RUN, many repetitions),
//! next to an empty TC program measured in the same run, as ratios.
//!
//! Records are reserved and then discarded in this mode (`Config::discard`), so the ring never fills and
//! every repetition pays for the reservation; nothing is timed against a fixed budget.

use std::{process::ExitCode, time::Duration};

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
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    observer::preflight::check_privileges()?;
    let mut kernel = Kernel::load(&Config {
        discard: 1,
        ..Config::default()
    })?;
    let syn = oracle::syn_with_all_options();
    let cases = [
        Case {
            program: Program::TcEmpty,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: None,
        },
        Case {
            program: Program::TcIngress,
            frame: "SYN with options",
            bytes: syn.clone(),
            goal: Some(4.0),
        },
        Case {
            program: Program::TcIngress,
            frame: "pure ACK",
            bytes: oracle::pure_ack(),
            goal: None,
        },
        Case {
            program: Program::TcIngress,
            frame: "ARP request",
            bytes: oracle::arp_request(),
            goal: None,
        },
        Case {
            program: Program::TcIngress,
            frame: "non-IP frame",
            bytes: oracle::non_ip_frame(),
            goal: Some(1.5),
        },
        Case {
            program: Program::Xdp,
            frame: "SYN with options",
            bytes: syn,
            goal: None,
        },
        Case {
            program: Program::Xdp,
            frame: "non-IP frame",
            bytes: oracle::non_ip_frame(),
            goal: None,
        },
    ];
    // Rounds interleave the cases so that a noisy moment hits all of them; each figure is a median.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (case, s) in cases.iter().zip(&mut samples) {
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
