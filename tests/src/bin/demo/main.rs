//! `cargo xtask demo`: the user's story in one run, in three namespaces that it makes and removes (a client and
//! a server, each joined by a veth pair to a router between them), while the real `observer watch` watches the
//! server's end and its lines are printed act by act:
//!
//! 1. a client whose window scale is 256 connects to a server on port 22;
//! 2. it sends 16 segments, two of which (the 4th and the 8th) an nftables rule on the router drops, so the
//!    server's SACK blocks point at two holes and the retransmissions fill them;
//! 3. the client closes with data still in flight, the server answers after that FIN and closes too;
//! 4. the server pings an address nobody holds, and its ARP requests go unanswered;
//! 5. a backlog-4 listener that never accepts: its SYN queue fills while the clients' final ACKs are dropped,
//!    then its accept queue once they pass, and later SYNs are dropped at each;
//! 6. `observer netstat` next to `netstat -ant` in the server's namespace.
//!
//! `--write FILE` also passes `-w FILE` to observer (the end-to-end test reads the raw windows from it).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tests::{
    agent::{self, Agent},
    netns::{self, Netns},
    traffic,
};

/// The client's address, on the router's first link (10.240.1.0/24, the router is .254).
const CLIENT: &str = "10.240.1.1";
/// The server's address, on the router's second link (10.240.0.0/24, the router is .254).
const SERVER: &str = "10.240.0.2";
/// The server's interface, which observer watches.
const SERVER_IF: &str = "veth-b";
/// An address on the server's link that nobody holds.
const ABSENT: &str = "10.240.0.77";
/// The server's port (acts 1 to 3).
const SSH: u16 = 22;
/// The port of the listener that never accepts (act 5).
const FULL: u16 = 8080;
/// Its listen() backlog.
const BACKLOG: i32 = 4;
/// The bytes act 2 sends: 16 segments of 1448.
const TRANSFER: usize = 16 * 1448;
/// The data segments to port 22 that the router's nftables rule drops, counted from 0.
const LOST: [u32; 2] = [3, 7];
/// What the client sends right before its FIN, and what the server answers after it (act 3).
const LAST_WORDS: usize = 3000;
const REPLY: usize = 2000;
/// The client's largest receive buffer: 8 MiB makes the kernel pick window scale 8 (WS=256), as long as
/// net.core.rmem_max (global) is below 16 MiB.
const CLIENT_RMEM: &str = "net.ipv4.tcp_rmem=4096 131072 8388608";
/// How long the lines of an act may keep coming after the one that ends it.
const SETTLE: Duration = Duration::from_millis(300);

/// Set by SIGINT or SIGTERM: the demo stops at the next act, removing what it made.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() -> ExitCode {
    let started = Instant::now();
    match parse_args().and_then(|write| run(write.as_deref())) {
        Ok(()) => {
            println!(
                "== demo done in {:.1} s; its namespaces and processes are gone",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--write FILE` argument, if given.
fn parse_args() -> anyhow::Result<Option<String>> {
    let mut write = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--write" => write = Some(args.next().context("--write needs a file name")?),
            "-h" | "--help" => {
                println!("usage: demo [--write FILE.pcapng]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(write)
}

/// Prints the act's caption.
fn caption(text: &str) -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    println!("== {text}");
    Ok(())
}

/// Prints observer's lines as they come until `done` has seen the one that ends the act (at most `limit`), then
/// those that follow within [`SETTLE`].
fn show(agent: &mut Agent, limit: Duration, mut done: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
    let mut seen = Vec::new();
    let ended = agent.wait_for(
        |l| {
            println!("{l}");
            done(l)
        },
        tests::patient(limit),
        &mut seen,
    );
    if !ended {
        bail!("observer did not print the act's last line within {limit:?}");
    }
    agent.wait_for(
        |l| {
            println!("{l}");
            false
        },
        SETTLE,
        &mut seen,
    );
    Ok(())
}

fn run(write: Option<&str>) -> anyhow::Result<()> {
    observer::sys::preflight::check_privileges()?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let bin = agent::beside_exe()?;
    let net = Net::new()?;
    let (client, server) = (&net.client, &net.server);
    netns::run(client.command("sysctl").args(["-qw", CLIENT_RMEM]))?;
    // Without syncookies a full SYN queue drops SYNs rather than answering them with a cookie.
    netns::run(server.command("sysctl").args(["-qw", "net.ipv4.tcp_syncookies=0"]))?;
    lose_segments(&net.router)?;

    let mut args = vec!["watch", "--iface", SERVER_IF];
    if let Some(file) = write {
        args.extend(["--write", file]);
    }
    let mut agent = Agent::start_bin(server, &bin, &args)?;
    println!(
        "$ observer {}    # in the server's namespace ({SERVER}); the client is {CLIENT}, behind a router",
        args.join(" ")
    );

    let ssh: SocketAddr = format!("{SERVER}:{SSH}").parse()?;
    let listener = traffic::listen(server, ssh, None)?;
    let (got, received) = mpsc::channel();
    let serving = thread::spawn(move || serve(listener, got));

    caption("act 1: handshake with window scaling: the client announces WS=256, its last ACK reads Win=raw*256")?;
    let mut conn = traffic::connect(client, None, ssh)?;
    show(&mut agent, Duration::from_secs(10), |l| l.contains(" handshake: "))?;

    caption(&format!(
        "act 2: {TRANSFER} bytes under loss: the router's nftables drop data segments #{} and #{}; SACK blocks \
         name both holes, retransmissions fill them",
        LOST[0] + 1,
        LOST[1] + 1
    ))?;
    conn.write_all(&vec![b'x'; TRANSFER])?;
    let acked = format!("Ack={} ", TRANSFER + 1);
    show(&mut agent, Duration::from_secs(10), |l| {
        l.contains(" out ") && l.contains(&acked)
    })?;
    received
        .recv_timeout(tests::wait())
        .context("the server never received act 2's bytes")?;

    caption(&format!(
        "act 3: four-way teardown with data in flight: {LAST_WORDS} bytes then FIN from the client, {REPLY} bytes \
         then FIN from the server"
    ))?;
    conn.write_all(&vec![b'y'; LAST_WORDS])?;
    conn.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)?;
    show(&mut agent, Duration::from_secs(10), |l| l.contains(" teardown: "))?;
    drop(conn);
    let (heard, answered) = serving
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    if (heard, answered, reply.len()) != (TRANSFER + LAST_WORDS, REPLY, REPLY) {
        bail!(
            "the server heard {heard} bytes and answered {answered}; the client read {}",
            reply.len()
        );
    }

    caption(&format!(
        "act 4: the server pings {ABSENT}, which nobody holds: ARP asks until the kernel gives up"
    ))?;
    let mut ping = server
        .command("ping")
        .args(["-c", "1", "-W", "3", ABSENT])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawning ping")?;
    let shown = show(&mut agent, Duration::from_secs(15), |l| {
        l.contains(" unanswered after ")
    });
    agent::wait_bounded(&mut ping, tests::wait())?;
    shown?;

    caption(&format!(
        "act 5: a backlog-{BACKLOG} listener on :{FULL} that never accepts: the SYN queue fills (final ACKs \
         dropped), then the accept queue, and later SYNs are dropped"
    ))?;
    let full: SocketAddr = format!("{SERVER}:{FULL}").parse()?;
    let _never_accepts = small_listener(server, full)?;
    let _clients = fill_queues(client, full, &mut agent)?;

    caption("act 6: `observer netstat` next to `netstat -ant`, both in the server's namespace")?;
    let ours = netns::run(server.command(bin.to_str().context("observer path")?).arg("netstat"))?;
    let theirs = netns::run(server.command("netstat").arg("-ant"))?;
    println!("$ observer netstat");
    print!("{ours}");
    println!("$ netstat -ant");
    print!("{theirs}");

    caption("observer's exit report (SIGINT)")?;
    let finished = agent.stop(libc::SIGINT)?;
    for line in finished
        .stdout
        .iter()
        .chain(&finished.stderr)
        .filter(|l| !l.starts_with(agent::READY))
    {
        println!("{line}");
    }
    if finished.code != Some(0) {
        bail!("observer exited with {:?}", finished.code);
    }
    Ok(())
}

/// The client, the router and the server, removed on drop.
struct Net {
    client: Netns,
    router: Netns,
    server: Netns,
}

impl Net {
    fn new() -> anyhow::Result<Net> {
        let net = Net {
            client: Netns::new("democ")?,
            router: Netns::new("demor")?,
            server: Netns::new("demos")?,
        };
        let links = [
            (&net.client, "veth-c", CLIENT, "veth-rc", "10.240.1.254"),
            (&net.server, SERVER_IF, SERVER, "veth-rs", "10.240.0.254"),
        ];
        for (end, iface, addr, router_if, router_addr) in links {
            end.ip(&[
                "link",
                "add",
                iface,
                "type",
                "veth",
                "peer",
                "name",
                router_if,
                "netns",
                &net.router.name,
            ])?;
            end.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
            // One segment per skb, so the router drops single segments and observer sees them as a capture would.
            end.ip(&["link", "set", "dev", iface, "gso_max_segs", "1", "up"])?;
            end.ip(&["route", "add", "default", "via", router_addr])?;
            net.router
                .ip(&["addr", "add", &format!("{router_addr}/24"), "dev", router_if])?;
            net.router.ip(&["link", "set", "dev", router_if, "up"])?;
        }
        netns::run(net.router.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        Ok(net)
    }
}

/// An nftables table in the router `ns` that drops the [`LOST`] data segments it forwards to port [`SSH`]
/// (numgen counts only the segments that reach it: data to that port, retransmissions included). A rule on the
/// client itself would not do: TCP sends a segment its own host dropped again at once, never lost.
fn lose_segments(ns: &Netns) -> anyhow::Result<()> {
    let nft = |args: &[&str]| netns::run(ns.command("nft").args(args));
    nft(&["add", "table", "inet", "demo_loss"])?;
    nft(&[
        "add",
        "chain",
        "inet",
        "demo_loss",
        "relay",
        "{ type filter hook forward priority 0 ; }",
    ])?;
    let rule = format!(
        "tcp dport {SSH} ip length > 100 numgen inc mod 1000 {{ {}, {} }} drop",
        LOST[0], LOST[1]
    );
    let mut args = vec!["add", "rule", "inet", "demo_loss", "relay"];
    args.extend(rule.split(' '));
    nft(&args)?;
    Ok(())
}

/// The server of acts 1 to 3: one connection; says when act 2's bytes are in, then reads to the client's FIN,
/// answers and closes. Returns the bytes heard and answered.
fn serve(listener: TcpListener, got: mpsc::Sender<()>) -> anyhow::Result<(usize, usize)> {
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0; TRANSFER];
    conn.read_exact(&mut buf)?;
    let _ = got.send(());
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    conn.write_all(&[b'z'; REPLY])?;
    Ok((TRANSFER + rest.len(), REPLY))
}

/// A listener on `addr` in `ns` with a backlog of [`BACKLOG`].
fn small_listener(ns: &Netns, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = traffic::listen(ns, addr, None)?;
    // SAFETY: listen(2) again on a listening socket we own only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen() with a small backlog");
    }
    Ok(listener)
}

/// Connection attempts from `ns` to `target` that each give up after 1.5 s (their SYN and its first
/// retransmission); returns how many got through.
fn late_clients(ns: &Netns, target: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let tries = (0..n)
        .map(|_| ns.spawn(move || TcpStream::connect_timeout(&target, Duration::from_millis(1500))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(tries
        .into_iter()
        .map(|t| t.join())
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count())
}

/// Act 5: fills the SYN queue of the listener at `target` with clients from `ns` whose final ACKs are dropped,
/// sends SYNs that find it full, lets the ACKs through so the accept queue fills, then sends SYNs that find
/// that full. Returns the client sockets, which must outlive the netstat act.
fn fill_queues(ns: &Netns, target: SocketAddr, agent: &mut Agent) -> anyhow::Result<Vec<TcpStream>> {
    let half_open = BACKLOG as usize + 1;
    ns.drop_final_acks(FULL)?;
    let clients = (0..half_open)
        .map(|_| traffic::connect(ns, None, target))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if late_clients(ns, target, 2)? != 0 {
        bail!("a SYN got through a full SYN queue");
    }
    netns::run(ns.command("nft").args(["delete", "table", "inet", "obs_final_ack"]))?;
    // The server retransmits its SYN-ACKs (1 s, then 3 s after the SYN); the clients' ACKs to them now pass.
    let mut completed = 0;
    show(agent, Duration::from_secs(10), |l| {
        completed += usize::from(l.contains("SYN_RECV→ESTABLISHED"));
        completed == half_open
    })?;
    if late_clients(ns, target, 2)? != 0 {
        bail!("a SYN got through a full accept queue");
    }
    show(agent, Duration::from_secs(5), |l| {
        l.contains("DROPPED: accept queue full")
    })?;
    Ok(clients)
}
