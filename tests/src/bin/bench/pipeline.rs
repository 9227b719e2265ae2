//! Whole-pipeline scenarios: the same traffic on one veth pair under each capture condition in turn (none,
//! tcpdump, the real agent in its modes), every figure against the run without capture or tcpdump -w's.
//!
//! - wire: `iperf3 -P 8 -l 64 -N` from namespace A to a server in namespace B, many small segments.
//! - churn: nginx in B answering a tiny page, `wrk` in A with `Connection: close`, one connection per request.
//!
//! The capturing process runs in B on `veth-b`; the wire's packets come from veth-b's own rx+tx counters, the
//! capturer's CPU from /proc/<pid>/stat (utime + stime over the run), its peak memory from VmHWM just before it
//! is stopped with SIGINT, its losses from the report it prints then.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
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
use tests::{
    agent::{self, READY},
    netns::{self, Netns, Pair},
    procstat,
};

use crate::{check_interrupted, verdict};

/// What the command line asks of these scenarios.
pub struct Options {
    /// How long each condition's traffic runs.
    pub seconds: u64,
}

/// How long a capturer may take to say it is ready.
const START: Duration = Duration::from_secs(30);
/// Time after the capturer is ready before the traffic starts (the agent's first socket dump).
const SETTLE: Duration = Duration::from_secs(1);
/// Time after the traffic before the capturer is stopped, for the records still held to be printed.
const QUIESCE: Duration = Duration::from_secs(1);
/// iperf3's port in namespace B.
const IPERF_PORT: u16 = 5201;
/// nginx's port in namespace B.
const HTTP_PORT: u16 = 8080;
/// wrk's threads and open connections.
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;

/// Who captures, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capturer {
    Nothing,
    TcpdumpWrite,
    TcpdumpText,
    Observer { json: bool, sockets: bool, write: bool },
}

const TEXT: Capturer = Capturer::Observer {
    json: false,
    sockets: true,
    write: false,
};
const JSON: Capturer = Capturer::Observer {
    json: true,
    sockets: true,
    write: false,
};

/// Every condition, in the order run and printed; each scenario runs all of them.
const CONDITIONS: [(&str, Capturer); 7] = [
    ("no capture", Capturer::Nothing),
    ("tcpdump -w FILE", Capturer::TcpdumpWrite),
    ("tcpdump -n (stdout)", Capturer::TcpdumpText),
    ("observer watch (text)", TEXT),
    ("observer watch --json", JSON),
    (
        "observer --no-sockets",
        Capturer::Observer {
            json: false,
            sockets: false,
            write: false,
        },
    ),
    (
        "observer -w FILE.pcapng",
        Capturer::Observer {
            json: false,
            sockets: true,
            write: true,
        },
    ),
];

/// The traffic of one scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Iperf,
    Http,
}

impl Load {
    fn unit(self) -> &'static str {
        match self {
            Load::Iperf => "Mbit/s",
            Load::Http => "req/s",
        }
    }

    /// Runs the client in A for `seconds`; returns the rate (bits/s or requests/s) and a note on errors.
    fn run(self, pair: &Pair, seconds: u64) -> anyhow::Result<(f64, String)> {
        match self {
            Load::Iperf => {
                let out = pair
                    .a
                    .command("iperf3")
                    .args(["-c", &pair.b_addr, "-p", &IPERF_PORT.to_string()])
                    .args(["-P", "8", "-l", "64", "-N", "--json", "-t", &seconds.to_string()])
                    .stdin(Stdio::null())
                    .output()
                    .context("running iperf3")?;
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("iperf3 printed no JSON ({})", out.status))?;
                if let Some(e) = json["error"].as_str() {
                    bail!("iperf3: {e}");
                }
                let bits = json["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("iperf3's JSON has no end.sum_received.bits_per_second")?;
                Ok((bits / 1e6, String::new()))
            }
            Load::Http => {
                let url = format!("http://{}:{HTTP_PORT}/", pair.b_addr);
                let out = netns::run(
                    pair.a
                        .command("wrk")
                        .args(["-t", &WRK_THREADS.to_string(), "-c", &WRK_CONNECTIONS.to_string()])
                        .args(["-d", &format!("{seconds}s"), "-H", "Connection: close", &url])
                        .stdin(Stdio::null()),
                )?;
                let rate = out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("no Requests/sec in wrk's output: {out:?}"))?;
                let errors: Vec<&str> = out
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
                    .collect();
                Ok((rate, errors.join("; ")))
            }
        }
    }
}

/// A server in namespace B, stopped (SIGTERM, then SIGKILL) on drop.
struct Server {
    child: Child,
    what: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; nginx's master ends its workers on SIGTERM.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        if agent::wait_bounded(&mut self.child, Duration::from_secs(10)).is_err() {
            eprintln!("bench: {} did not stop", self.what);
        }
    }
}

impl Server {
    /// Starts `cmd` and waits until something listens on `port` in `ns`.
    fn start(ns: &Netns, mut cmd: Command, port: u16, what: &'static str) -> anyhow::Result<Server> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // iperf3's stderr is only its "interrupt" at the end; nginx's says why it failed.
            .stderr(if what == "nginx" {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let mut server = Server { child, what };
        let deadline = Instant::now() + START;
        loop {
            let out = netns::run(ns.command("ss").args(["-ltnH", &format!("sport = :{port}")]))?;
            if !out.trim().is_empty() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{what} exited ({status}) before listening on port {port}");
            }
            if Instant::now() > deadline {
                bail!("{what} did not listen on port {port} within {START:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("observer-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx's configuration: one worker, no logs, a 3-byte answer, no keep-alive.
fn nginx_conf(dir: &Path, addr: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\n\
         error_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n\
         \x20 client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  keepalive_timeout 0;\n\
         \x20 server {{ listen {addr}:{HTTP_PORT} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    )
}

/// Which stdout lines are packet lines.
#[derive(Clone, Copy)]
enum Lines {
    /// Every line (tcpdump prints one per packet).
    All,
    /// observer's text: `<time> <iface> ...`, not `<time> kernel|analysis|arp|neigh ...`.
    Text,
    /// observer's JSON: `"proto":"tcp"` or `"proto":"arp"` (analysis, kernel and neigh lines have others).
    Json,
}

impl Lines {
    fn is_packet(self, line: &[u8], iface: &[u8]) -> bool {
        match self {
            Lines::All => true,
            Lines::Text => {
                let mut fields = line.split(|&b| b == b' ');
                fields.next();
                fields.next() == Some(iface)
            }
            Lines::Json => {
                const KEY: &[u8] = b"\"proto\":\"";
                line.windows(KEY.len()).position(|w| w == KEY).is_some_and(|at| {
                    let v = &line[at + KEY.len()..];
                    v.starts_with(b"tcp\"") || v.starts_with(b"arp\"")
                })
            }
        }
    }
}

/// A running capturer whose stdout is read and its packet lines counted.
struct Running {
    child: Child,
    packets: Arc<AtomicU64>,
    stdout: Option<thread::JoinHandle<()>>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Running {
    /// Starts `cmd` and waits until a stderr line satisfies `ready`.
    fn start(mut cmd: Command, lines: Lines, iface: &str, ready: fn(&str) -> bool) -> anyhow::Result<Running> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let out = child.stdout.take().context("stdout")?;
        let stderr = agent::lines(child.stderr.take().context("stderr")?);
        let packets = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&packets);
        let iface = iface.as_bytes().to_vec();
        let stdout = thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, out);
            let mut line = Vec::with_capacity(1024);
            while matches!(r.read_until(b'\n', &mut line), Ok(1..)) {
                if lines.is_packet(&line, &iface) {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                line.clear();
            }
        });
        let mut running = Running {
            child,
            packets,
            stdout: Some(stdout),
            stderr,
            stderr_seen: Vec::new(),
        };
        let deadline = Instant::now() + START;
        loop {
            match running.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let done = ready(&line);
                    running.stderr_seen.push(line);
                    if done {
                        return Ok(running);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the capturer exited before it was ready: {}",
                    running.stderr_seen.join(" | ")
                ),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    bail!(
                        "the capturer was not ready within {START:?}: {}",
                        running.stderr_seen.join(" | ")
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGINT, waits for the exit (SIGKILL after 30 s) and returns the stderr lines.
    fn stop(&mut self) -> anyhow::Result<Vec<String>> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = agent::wait_bounded(&mut self.child, Duration::from_secs(30))?;
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        let mut stderr = std::mem::take(&mut self.stderr_seen);
        stderr.extend(agent::drain(&self.stderr));
        if !status.success() {
            bail!("the capturer ended with {status}: {}", last_lines(&stderr));
        }
        Ok(stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn last_lines(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// The number before `word` on the first line of `lines` that starts with `prefix` (`socket events:`, `lost`).
fn number_before(lines: &[String], prefix: &str, word: &str) -> Option<u64> {
    let line = lines.iter().find(|l| l.starts_with(prefix))?;
    let words: Vec<&str> = line
        .split([' ', ',', ':', '(', ')'])
        .filter(|t| !t.is_empty())
        .collect();
    words.windows(2).find(|w| w[1] == word)?[0].parse().ok()
}

/// The number after the colon of the line starting with `prefix`.
fn number_after(lines: &[String], prefix: &str) -> Option<u64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

/// Packets in a pcap or pcapng file, counted from the record headers.
fn packets_in_file(path: &Path) -> anyhow::Result<u64> {
    let mut f = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic)
        .with_context(|| format!("{} is empty", path.display()))?;
    let word = |f: &mut BufReader<File>, big: bool| -> anyhow::Result<Option<u32>> {
        let mut b = [0u8; 4];
        match f.read_exact(&mut b) {
            Ok(()) => Ok(Some(if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            })),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let mut count = 0;
    match u32::from_le_bytes(magic) {
        0xa1b2_c3d4 | 0xa1b2_3c4d | 0xd4c3_b2a1 | 0x4d3c_b2a1 => {
            let big = matches!(u32::from_le_bytes(magic), 0xd4c3_b2a1 | 0x4d3c_b2a1);
            f.seek(SeekFrom::Start(24))?;
            // Record header: seconds, fraction, captured length, original length.
            while word(&mut f, big)?.is_some() {
                word(&mut f, big)?;
                let incl = word(&mut f, big)?.context("cut record header")?;
                word(&mut f, big)?;
                f.seek_relative(i64::from(incl))?;
                count += 1;
            }
        }
        0x0a0d_0d0a => {
            f.seek(SeekFrom::Start(8))?;
            let big = word(&mut f, false)? == Some(0x4d3c_2b1a);
            f.seek(SeekFrom::Start(0))?;
            while let Some(kind) = word(&mut f, big)? {
                let len = word(&mut f, big)?.context("cut block header")?;
                if len < 12 {
                    bail!("{}: a block of {len} bytes", path.display());
                }
                // Enhanced, simple and obsolete packet blocks.
                if matches!(kind, 6 | 3 | 2) {
                    count += 1;
                }
                f.seek_relative(i64::from(len) - 8)?;
            }
        }
        m => bail!("{}: not pcap or pcapng (magic {m:#x})", path.display()),
    }
    Ok(count)
}

/// What one condition measured.
struct Row {
    label: &'static str,
    capturer: Capturer,
    /// Packets on veth-b while the capturer ran (rx + tx).
    wire: u64,
    /// Packets per second on veth-b while the traffic ran.
    pps: f64,
    /// The load's rate (Mbit/s or requests/s).
    rate: f64,
    /// Packets the capturer printed a line for (or wrote to its file).
    lines: Option<u64>,
    /// Packets the capturer lost in the kernel: tcpdump's "dropped by kernel", observer's dropped records.
    drops: Option<u64>,
    /// observer's socket events lost (ring full).
    sock_lost: Option<u64>,
    /// observer's data segments folded into per-flow lines above the packet ring's high-water mark.
    folded: Option<u64>,
    /// The capturer's CPU per wire packet.
    cpu_us: Option<f64>,
    /// Its peak RSS.
    hwm_mib: Option<f64>,
    note: String,
}

/// The veth's rx + tx packets.
fn wire(pair: &Pair) -> anyhow::Result<u64> {
    let (rx, tx) = pair.b.link_packets(&pair.b_if)?;
    Ok(rx + tx)
}

fn measure(
    pair: &Pair,
    bin: &Path,
    dir: &Path,
    load: Load,
    seconds: u64,
    label: &'static str,
    capturer: Capturer,
) -> anyhow::Result<Row> {
    let iface = pair.b_if.as_str();
    let file = dir.join(match capturer {
        Capturer::TcpdumpWrite => "tcpdump.pcap",
        _ => "observer.pcapng",
    });
    let _ = std::fs::remove_file(&file);
    let file_str = file.to_str().context("temporary path")?;
    let mut running = match capturer {
        Capturer::Nothing => None,
        Capturer::TcpdumpWrite | Capturer::TcpdumpText => {
            let mut cmd = pair.b.command("tcpdump");
            // -Z root: Debian's tcpdump drops to its own user before it opens the file.
            cmd.args(["-i", iface, "-Z", "root"]);
            if capturer == Capturer::TcpdumpWrite {
                cmd.args(["-w", file_str]);
            } else {
                cmd.arg("-n");
            }
            // tcpdump: "listening on veth-b, link-type ...", after "tcpdump: " or "verbose output suppressed ... | ".
            Some(Running::start(cmd, Lines::All, iface, |l| l.contains("listening on "))?)
        }
        Capturer::Observer { json, sockets, write } => {
            let mut cmd = pair.b.command(bin.to_str().context("binary path")?);
            cmd.args(["watch", "--iface", iface]);
            if json {
                cmd.arg("--json");
            }
            if !sockets {
                cmd.arg("--no-sockets");
            }
            if write {
                cmd.args(["-w", file_str]);
            }
            let lines = if json { Lines::Json } else { Lines::Text };
            let r = Running::start(cmd, lines, iface, |l| l.starts_with(READY))?;
            let comm = procstat::read(r.pid(), "comm")?;
            if comm.trim() != "observer" {
                bail!("pid {} is {:?}, not observer", r.pid(), comm.trim());
            }
            Some(r)
        }
    };
    thread::sleep(SETTLE);
    let pid = running.as_ref().map(Running::pid);
    let lines0 = running.as_ref().map_or(0, |r| r.packets.load(Ordering::Relaxed));
    let cpu0 = pid.map(procstat::cpu_ms).transpose()?;
    let wire0 = wire(pair)?;
    let start = Instant::now();
    let (rate, note) = load.run(pair, seconds)?;
    let (traffic_wire, took) = (wire(pair)? - wire0, start.elapsed());
    thread::sleep(QUIESCE);
    let wire1 = wire(pair)?;
    let cpu1 = pid.map(procstat::cpu_ms).transpose()?;
    let hwm = pid.map(|p| procstat::status_kib(p, "VmHWM:")).transpose()?;
    let packets = wire1 - wire0;
    let mut row = Row {
        label,
        capturer,
        wire: packets,
        pps: traffic_wire as f64 / took.as_secs_f64(),
        rate,
        lines: None,
        drops: None,
        sock_lost: None,
        folded: None,
        cpu_us: cpu0.zip(cpu1).map(|(a, b)| (b - a) * 1e3 / packets.max(1) as f64),
        hwm_mib: hwm.map(|k| k as f64 / 1024.0),
        note,
    };
    if let Some(r) = running.as_mut() {
        let stderr = r.stop()?;
        let printed = r.packets.load(Ordering::Relaxed) - lines0;
        match capturer {
            Capturer::TcpdumpWrite | Capturer::TcpdumpText => {
                row.drops = stderr
                    .iter()
                    .find(|l| l.ends_with("packets dropped by kernel"))
                    .and_then(|l| l.split_whitespace().next()?.parse().ok());
                row.lines = Some(if capturer == Capturer::TcpdumpWrite {
                    packets_in_file(&file)?
                } else {
                    printed
                });
            }
            Capturer::Observer { write, .. } => {
                // The report's dropped records are the packet records and the socket events the full ring lost.
                let dropped = number_after(&stderr, "dropped records (ring buffer full)");
                row.sock_lost = number_before(&stderr, "socket events:", "lost");
                row.folded = number_before(&stderr, "folded:", "data");
                row.drops = dropped.map(|d| d.saturating_sub(row.sock_lost.unwrap_or(0)));
                row.lines = Some(if write { packets_in_file(&file)? } else { printed });
                if row.drops.is_none() {
                    bail!("no exit report from observer: {}", last_lines(&stderr));
                }
            }
            Capturer::Nothing => {}
        }
    }
    let _ = std::fs::remove_file(&file);
    Ok(row)
}

/// Runs the wire-to-line scenario.
pub fn wire_scenario(opts: &Options) -> anyhow::Result<()> {
    scenario(Load::Iperf, opts)
}

/// Runs the churn scenario.
pub fn churn_scenario(opts: &Options) -> anyhow::Result<()> {
    scenario(Load::Http, opts)
}

fn scenario(load: Load, opts: &Options) -> anyhow::Result<()> {
    let bin = agent::beside_exe()?;
    let (tag, subnet) = match load {
        Load::Iperf => ("wire", 241),
        Load::Http => ("churn", 242),
    };
    let dir = TempDir::new(tag)?;
    let pair = Pair::new(tag, subnet)?;
    for ns in [&pair.a, &pair.b] {
        // No IPv6 chatter (router solicitations, MLD): every packet on the wire is one a capturer should show.
        netns::run(ns.command("sysctl").args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]))?;
    }
    // The clients close first (wrk) or often: let them reuse their TIME_WAIT ports, as a busy client host would.
    netns::run(pair.a.command("sysctl").args([
        "-qw",
        "net.ipv4.tcp_tw_reuse=1",
        "net.ipv4.ip_local_port_range=1024 65000",
    ]))?;
    let _server = match load {
        Load::Iperf => {
            let mut cmd = pair.b.command("iperf3");
            cmd.args(["-s", "-B", &pair.b_addr, "-p", &IPERF_PORT.to_string()]);
            Server::start(&pair.b, cmd, IPERF_PORT, "iperf3 -s")?
        }
        Load::Http => {
            let conf = dir.0.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(&dir.0, &pair.b_addr))?;
            let mut cmd = pair.b.command("nginx");
            cmd.arg("-p").arg(&dir.0).arg("-c").arg(&conf).args(["-e", "stderr"]);
            Server::start(&pair.b, cmd, HTTP_PORT, "nginx")?
        }
    };
    match load {
        Load::Iperf => println!(
            "wire to line: `iperf3 -P 8 -l 64 -N -t {}` from {} to {} (veth-a -> veth-b); capturer in {} on {}",
            opts.seconds, pair.a.name, pair.b_addr, pair.b.name, pair.b_if
        ),
        Load::Http => println!(
            "churn: `wrk -t {WRK_THREADS} -c {WRK_CONNECTIONS} -d {}s -H 'Connection: close'` to nginx on {}:{HTTP_PORT} \
             (one connection per request); capturer in {} on {}",
            opts.seconds, pair.b_addr, pair.b.name, pair.b_if
        ),
    }
    let mut rows = Vec::new();
    for (label, capturer) in CONDITIONS {
        check_interrupted()?;
        let row = measure(&pair, &bin, &dir.0, load, opts.seconds, label, capturer).with_context(|| label)?;
        rows.push(row);
    }
    print_rows(load, &rows);
    Ok(())
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("-".into(), f)
}

fn print_rows(load: Load, rows: &[Row]) {
    let base = rows[0].rate;
    let tcpdump = rows.iter().find(|r| r.capturer == Capturer::TcpdumpWrite);
    let rate_head = match load {
        Load::Iperf => "x thru",
        Load::Http => "x req/s",
    };
    println!(
        "{:<24} {:>9} {:>10} {:>9} {:>8} {:>10} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8}",
        "condition",
        "wire pps",
        "packets",
        load.unit(),
        rate_head,
        "lines",
        "lines%",
        "folded",
        "drops",
        "sock lost",
        "us/pkt",
        "peak MiB",
        "x tcpd-w"
    );
    for r in rows {
        let x_tcpdump = match (r.cpu_us, tcpdump.and_then(|t| t.cpu_us)) {
            (Some(c), Some(t)) if t > 0.0 => format!("{:.2}x", c / t),
            _ => "-".into(),
        };
        println!(
            "{:<24} {:>9.0} {:>10} {:>9.1} {:>7.3}x {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}{}",
            r.label,
            r.pps,
            r.wire,
            r.rate,
            r.rate / base,
            opt(r.lines, |l| l.to_string()),
            opt(r.lines, |l| format!("{:.1}", 100.0 * l as f64 / r.wire.max(1) as f64)),
            opt(r.folded, |f| f.to_string()),
            opt(r.drops, |d| d.to_string()),
            opt(r.sock_lost, |d| d.to_string()),
            opt(r.cpu_us, |c| format!("{c:.2}")),
            opt(r.hwm_mib, |m| format!("{m:.1}")),
            x_tcpdump,
            if r.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.note)
            }
        );
    }
    println!(
        "(packets: veth-b rx+tx while the capturer ran; lines: packet lines printed, or packets in the -w file; \
         folded: observer's data segments counted in per-flow lines instead (above --fold-above); drops: tcpdump's \"dropped by kernel\", observer's dropped records (ring buffer full) less its socket \
         events lost; us/pkt: the capturer's utime+stime over those packets; x tcpd-w: that CPU against tcpdump -w's)"
    );
    let Some(t) = tcpdump else { return };
    let (cpu_goal, rate_goal, rss_goal) = match load {
        Load::Iperf => (3.0, 0.95, Some(48.0)),
        Load::Http => (6.0, 0.9, None),
    };
    println!("goals (observer text and --json, with socket linking; against tcpdump -w in this run):");
    for r in rows.iter().filter(|r| r.capturer == TEXT || r.capturer == JSON) {
        let mut goals = vec![
            verdict(r.lines.is_some_and(|l| l >= r.wire), "a line for every packet"),
            verdict(r.sock_lost == Some(0), "0 socket events lost"),
            verdict(
                matches!((r.cpu_us, t.cpu_us), (Some(c), Some(tc)) if c <= cpu_goal * tc),
                &format!("CPU/packet <= {cpu_goal}x tcpdump -w's"),
            ),
            verdict(
                r.rate >= rate_goal * t.rate,
                &format!(
                    "{} >= {rate_goal}x tcpdump -w's ({:.3}x)",
                    match load {
                        Load::Iperf => "throughput",
                        Load::Http => "request rate",
                    },
                    r.rate / t.rate
                ),
            ),
        ];
        if let Some(g) = rss_goal {
            goals.push(verdict(
                r.hwm_mib.is_some_and(|m| m <= g),
                &format!("peak RSS <= {g} MiB"),
            ));
        }
        println!("  {:<24} {}", r.label, goals.join("; "));
    }
}
