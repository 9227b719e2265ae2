//! Whole-process tables: `observer netstat --ss`, `observer netstat` and `observer queues --once` as a user runs
//! them, each next to the tool it replaces (`ss -tan`, `netstat -ant`, `ss -ltn`), with many connections open in a
//! namespace. Wall time from spawn to exit (stdout to /dev/null), median of the runs, and the peak RSS of each
//! process (GNU time's `%M`, its wait4 rusage of the command).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{agent, conns::Conns};

use crate::{check_interrupted, verdict};

/// One command and the tool it is measured against.
struct Pairing {
    ours: &'static [&'static str],
    tool: (&'static str, &'static [&'static str]),
    /// Goal on wall time as a multiple of the tool's, by table size (below 100,000 sockets, then at or above).
    goal: (f64, f64),
}

const PAIRINGS: [Pairing; 3] = [
    Pairing {
        ours: &["netstat", "--ss"],
        tool: ("ss", &["-tan"]),
        goal: (0.5, 0.3),
    },
    Pairing {
        ours: &["netstat"],
        tool: ("netstat", &["-ant"]),
        goal: (0.25, 0.25),
    },
    Pairing {
        ours: &["queues", "--once"],
        tool: ("ss", &["-ltn"]),
        goal: (1.5, 1.5),
    },
];

/// Peak RSS of each observer command at most this many times `ss -tan`'s.
const RSS_GOAL: f64 = 2.0;

/// One run's wall time, peak RSS (KiB) and stdout lines (counted only when asked).
///
/// The peak comes from `time -f %M` (GNU time's wait4 rusage of the command): the rusage of a child this bench
/// spawns itself would report the bench's own peak, since Linux carries the peak of the memory image a process
/// replaces across exec, and a spawned child starts as a copy of (or in) the bench's.
fn take(program: &Path, args: &[&str], count: bool, out: &Path) -> anyhow::Result<(Duration, u64, usize)> {
    let mut cmd = Command::new("time");
    cmd.args(["-f", "%M", "-o"]).arg(out).arg(program).args(args);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    cmd.stdout(if count { Stdio::piped() } else { Stdio::null() });
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning time {}", program.display()))?;
    let mut lines = 0;
    if let Some(mut stdout) = child.stdout.take() {
        let mut text = Vec::new();
        stdout.read_to_end(&mut text)?;
        lines = text.iter().filter(|&&b| b == b'\n').count();
    }
    let mut stderr = child.stderr.take();
    let status = child.wait()?;
    let took = start.elapsed();
    if !status.success() {
        let mut msg = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut msg);
        }
        bail!(
            "{} {} failed ({status}): {}",
            program.display(),
            args.join(" "),
            msg.trim()
        );
    }
    let report = std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let peak = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("time -f %M wrote {report:?}"))?;
    Ok((took, peak, lines))
}

/// The figures of one command.
struct Figures {
    label: String,
    /// Lines printed (header included).
    rows: usize,
    median: Duration,
    peak_kib: u64,
}

/// Runs the six commands `runs` times, interleaved, on this thread (which must be in the namespace).
fn measure(observer: PathBuf, runs: usize) -> anyhow::Result<Vec<Figures>> {
    let out = std::env::temp_dir().join(format!("observer-bench-rss-{}", std::process::id()));
    let figures = measure_into(observer, runs, &out);
    let _ = std::fs::remove_file(&out);
    figures
}

fn measure_into(observer: PathBuf, runs: usize, out: &Path) -> anyhow::Result<Vec<Figures>> {
    let mut commands: Vec<(String, PathBuf, Vec<&str>)> = Vec::new();
    for p in &PAIRINGS {
        commands.push((
            format!("observer {}", p.ours.join(" ")),
            observer.clone(),
            p.ours.to_vec(),
        ));
        let (tool, args) = p.tool;
        commands.push((format!("{tool} {}", args.join(" ")), PathBuf::from(tool), args.to_vec()));
    }
    // The untimed first round counts the rows and warms the caches.
    let mut rows = Vec::new();
    for (label, program, args) in &commands {
        rows.push(take(program, args, true, out).with_context(|| label.clone())?.2);
    }
    let mut samples = vec![Vec::new(); commands.len()];
    let mut peaks = vec![0u64; commands.len()];
    for _ in 0..runs {
        check_interrupted()?;
        for (i, (label, program, args)) in commands.iter().enumerate() {
            let (took, peak, _) = take(program, args, false, out).with_context(|| label.clone())?;
            samples[i].push(took);
            peaks[i] = peaks[i].max(peak);
        }
    }
    Ok(commands
        .into_iter()
        .zip(rows)
        .zip(samples.iter_mut().zip(peaks))
        .map(|(((label, ..), rows), (s, peak_kib))| Figures {
            label,
            rows,
            median: Duration::from_nanos(crate::median_ns(s) as u64),
            peak_kib,
        })
        .collect())
}

/// Runs the scenario once per size in `sizes` (connections; each is two sockets, plus the listeners).
pub fn run(sizes: &[usize], runs: usize) -> anyhow::Result<()> {
    let observer = agent::beside_exe()?;
    for &n in sizes {
        check_interrupted()?;
        let conns = Conns::open("tables", n).with_context(|| format!("opening {n} connections"))?;
        let sockets = conns.sockets();
        let bin = observer.clone();
        let figures = conns.ns().enter(move || measure(bin, runs))??;
        println!(
            "whole-process tables: {sockets} sockets ({n} connections), median of {runs} runs, wall time from \
             spawn to exit (stdout to /dev/null), peak RSS from time -f %M"
        );
        println!(
            "{:<24} {:>8} {:>10} {:>9} {:>9} {:>9}  goal",
            "command", "lines", "ms", "x tool", "peak MiB", "x ss RSS"
        );
        let ss_peak = figures[1].peak_kib.max(1) as f64;
        for (i, f) in figures.iter().enumerate() {
            let tool = &figures[i | 1];
            let x = f.median.as_secs_f64() / tool.median.as_secs_f64();
            let goal = if i % 2 == 0 {
                let p = &PAIRINGS[i / 2];
                let g = if sockets >= 100_000 { p.goal.1 } else { p.goal.0 };
                format!(
                    "{}; {}",
                    verdict(x <= g, &format!("<= {g}x {}", tool.label)),
                    verdict(
                        f.peak_kib as f64 <= RSS_GOAL * ss_peak,
                        &format!("peak RSS <= {RSS_GOAL}x ss -tan's")
                    )
                )
            } else {
                String::new()
            };
            println!(
                "{:<24} {:>8} {:>10.2} {:>8.3}x {:>9.1} {:>8.2}x  {goal}",
                f.label,
                f.rows,
                f.median.as_secs_f64() * 1e3,
                x,
                f.peak_kib as f64 / 1024.0,
                f.peak_kib as f64 / ss_peak
            );
        }
        drop(conns);
        println!();
    }
    Ok(())
}
