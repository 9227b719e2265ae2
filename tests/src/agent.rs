//! Runs the real `observer` binary inside a namespace and collects what it prints.

use std::{
    io::{BufRead, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The stderr line the agent prints once its programs are attached.
pub const READY: &str = "observer: watching";

/// Path of the observer binary built beside the test binaries (`cargo xtask test` builds it first).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OBSERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/observer
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("observer"))
        .context("locating the target directory")?;
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build -p observer` (cargo xtask test does)",
            path.display()
        );
    }
    Ok(path)
}

/// Path of the observer binary beside the running bench or soak binary (target/<profile>/), rebuilt first from
/// the same sources when run through cargo.
pub fn beside_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("OBSERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running binary")?;
    let dir = exe.parent().context("the running binary's directory")?;
    if let (Some(cargo), Some(manifest)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "observer", "--manifest-path"])
            .arg(PathBuf::from(manifest).join("Cargo.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if dir.file_name().is_some_and(|d| d == "release") {
            cmd.arg("--release");
        }
        crate::netns::run(&mut cmd).context("building the observer binary")?;
    }
    let path = dir.join("observer");
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p observer` or set OBSERVER_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// A running agent.
pub struct Agent {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What the agent printed, once stopped.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Standard output lines.
    pub stdout: Vec<String>,
    /// Standard error lines.
    pub stderr: Vec<String>,
}

/// Waits for `child` to exit, killing it (SIGKILL) once `limit` has passed: a test never hangs on a process
/// that ignores its signal.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

impl From<std::process::Output> for Finished {
    fn from(out: std::process::Output) -> Finished {
        let text = |b: &[u8]| String::from_utf8_lossy(b).lines().map(str::to_owned).collect();
        Finished {
            code: out.status.code(),
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
        }
    }
}

/// The words of an exit report line, without its punctuation.
fn words(line: &str) -> Vec<&str> {
    line.split([' ', ',', ':', '(', ')'])
        .filter(|t| !t.is_empty())
        .collect()
}

impl Finished {
    /// The value printed after `name` in the exit report, e.g. `control_only_suppressed 3`.
    pub fn counter(&self, name: &str) -> u64 {
        self.stderr
            .iter()
            .find_map(|line| {
                let t = words(line);
                t.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok())
            })
            .unwrap_or_else(|| panic!("no counter {name} in the report: {:#?}", self.stderr))
    }

    /// The number printed before `word` on the report line that starts with `prefix`, e.g.
    /// `count_before("socket events:", "lost")` of `socket events: 6 emitted, 0 lost (ring full)`.
    pub fn count_before(&self, prefix: &str, word: &str) -> Option<u64> {
        let line = self.stderr.iter().find(|l| l.starts_with(prefix))?;
        words(line).windows(2).find(|w| w[1] == word)?[0].parse().ok()
    }
}

/// A command that runs `observer` in `ns`, as `prefix` (e.g. setpriv) when given; add its arguments.
pub fn command(ns: &Netns, prefix: &[&str]) -> anyhow::Result<Command> {
    let bin = binary()?;
    let bin = bin.to_str().context("binary path")?;
    Ok(match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = ns.command(first);
            c.args(rest).arg(bin);
            c
        }
        None => ns.command(bin),
    })
}

/// Runs `observer <args>` in `ns` (as `prefix` when given) to completion.
pub fn run(ns: &Netns, prefix: &[&str], args: &[&str]) -> Finished {
    let mut cmd = command(ns, prefix).expect("observer binary");
    cmd.args(args).output().expect("running observer").into()
}

/// Reads `r` line by line on a thread; the lines arrive on the returned channel, which closes at end of file.
pub fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The lines left on `rx` until its writer closes; bounded, so a descendant still holding the pipe (a wrapper
/// script's child, say) cannot hang the test.
pub fn drain(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(line) = rx.recv_timeout(crate::patient(Duration::from_secs(30))) {
        out.push(line);
    }
    out
}

impl Agent {
    /// Starts `observer <args>` in `ns` and waits until it reports that it is attached.
    pub fn start(ns: &Netns, args: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_as(ns, &[], args)
    }

    /// Starts `observer <args>` in `ns` as `prefix` (e.g. setpriv) and waits until it reports that it is attached.
    pub fn start_as(ns: &Netns, prefix: &[&str], args: &[&str]) -> anyhow::Result<Agent> {
        let mut cmd = command(ns, prefix)?;
        cmd.args(args);
        Agent::spawn(cmd)
    }

    /// Starts `bin <args>` in `ns` (an observer binary found by the caller, e.g. [`beside_exe`]) and waits until it
    /// reports that it is attached.
    pub fn start_bin(ns: &Netns, bin: &Path, args: &[&str]) -> anyhow::Result<Agent> {
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        cmd.args(args);
        Agent::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> anyhow::Result<Agent> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning observer")?;
        let stdout = lines(child.stdout.take().context("stdout")?);
        let stderr = lines(child.stderr.take().context("stderr")?);
        let mut agent = Agent {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        };
        loop {
            match agent.stderr.recv_timeout(crate::patient(Duration::from_secs(30))) {
                Ok(line) => {
                    let ready = line.starts_with(READY);
                    agent.stderr_seen.push(line);
                    if ready {
                        return Ok(agent);
                    }
                }
                Err(_) => {
                    let _ = agent.child.kill();
                    bail!("observer did not attach within 30 s; stderr: {:?}", agent.stderr_seen);
                }
            }
        }
    }

    /// The agent's process id (`ip netns exec` execs it, so this is observer itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stdout line satisfies `pred` (or `timeout` passes) and returns the lines read so far.
    pub fn wait_for(&mut self, mut pred: impl FnMut(&str) -> bool, timeout: Duration, seen: &mut Vec<String>) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends `signal`, waits for exit (a stalled agent that does not end within 30 s is an error) and collects
    /// the output not yet read.
    pub fn stop(&mut self, signal: i32) -> anyhow::Result<Finished> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait_exit(crate::patient(Duration::from_secs(30)))
    }

    /// Waits for an agent that ends by itself (`--count`), at most `timeout`, and collects its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let deadline = std::time::Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                bail!("observer did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<Finished> {
        let status = self.child.wait()?;
        let stdout = drain(&self.stdout);
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        stderr.extend(drain(&self.stderr));
        Ok(Finished {
            code: status.code(),
            stdout,
            stderr,
        })
    }
}

/// A running agent whose stdout is read and counted, not kept: for runs that print more than a test could hold.
pub struct Drained {
    child: Child,
    lines: Arc<AtomicU64>,
    stdout: Option<thread::JoinHandle<()>>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    /// How long it took from the spawn to its first stdout byte or its attached line.
    pub ready_after: Duration,
}

impl Drained {
    /// Starts `bin <args>` in `ns` (through `ip netns exec`, which execs it under the same pid) and waits, at most
    /// `limit`, for its first stdout byte or its attached line.
    pub fn start(ns: &Netns, bin: &Path, args: &[&str], limit: Duration) -> anyhow::Result<Drained> {
        let mut cmd = ns.command(bin.to_str().context("binary path")?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().context("spawning observer")?;
        let mut out = child.stdout.take().context("stdout")?;
        let stderr = lines(child.stderr.take().context("stderr")?);
        let lines = Arc::new(AtomicU64::new(0));
        let (tx, first) = mpsc::channel();
        let counted = Arc::clone(&lines);
        let stdout = thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            let mut told = false;
            while let Ok(n @ 1..) = out.read(&mut buf) {
                let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                counted.fetch_add(newlines as u64, Ordering::Relaxed);
                if !told {
                    told = tx.send(()).is_ok();
                }
            }
        });
        let mut agent = Drained {
            child,
            lines,
            stdout: Some(stdout),
            stderr,
            stderr_seen: Vec::new(),
            ready_after: Duration::ZERO,
        };
        loop {
            if first.try_recv().is_ok() {
                break;
            }
            match agent.stderr.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    let ready = line.starts_with(READY);
                    agent.stderr_seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("observer exited: {}", agent.first_lines())
                }
                Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() > limit => {
                    bail!("observer printed nothing within {limit:?}: {}", agent.first_lines())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        agent.ready_after = start.elapsed();
        Ok(agent)
    }

    /// The first stderr lines, which say why it failed (a backtrace after them is not wanted).
    fn first_lines(&self) -> String {
        self.stderr_seen.iter().take(3).cloned().collect::<Vec<_>>().join(" | ")
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines printed on stdout so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Sends `signal`, waits for exit (killing it after 30 s) and collects stderr; stdout stays empty, its lines
    /// are in [`Drained::lines`].
    pub fn stop(&mut self, signal: i32) -> anyhow::Result<Finished> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = wait_bounded(&mut self.child, crate::patient(Duration::from_secs(30)))?;
        if let Some(stdout) = self.stdout.take() {
            let _ = stdout.join();
        }
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        stderr.extend(drain(&self.stderr));
        Ok(Finished {
            code: status.code(),
            stdout: Vec::new(),
            stderr,
        })
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A test that failed before stop() must not leave the agent running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
