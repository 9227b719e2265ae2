//! End-to-end tests: the real `observer` binary on a veth pair between two namespaces each test creates.
//!
//! Traffic is real TCP (std::net on threads inside the namespaces) and the kernel's own ARP; every assertion
//! is on what the agent prints. `tshark_agrees_on_every_segment` holds the agent against tshark, the independent
//! oracle, packet by packet. Each test has its own [`Pair`] (its own subnet), so the tests run in parallel.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use tests::{
    agent::{self, Agent, Finished},
    netns::{self, Netns, Pair},
    oracle, require,
    tshark::{self, Tshark},
};

/// What the client sends each round (one line).
const REQUEST: &[u8] = b"hello from a\n";
/// What the server answers to each line.
const REPLY: &[u8] = b"and hello from b, a little longer\n";
/// Payload lengths as the agent prints them.
const N: u32 = REQUEST.len() as u32;
const M: u32 = REPLY.len() as u32;
/// The port with a server in most tests.
const PORT: u16 = 22;

// ---------------------------------------------------------------------------------------------------------------
// Traffic

/// Binds a server on `addr:port` inside `ns` and serves one connection on a thread: each line read is answered
/// with [`REPLY`]; at the client's FIN the server closes. The thread returns the number of lines answered.
fn serve(ns: &Netns, addr: &str, port: u16) -> thread::JoinHandle<usize> {
    let bind = format!("{addr}:{port}");
    let listener = ns
        .enter(move || TcpListener::bind(&bind))
        .expect("entering the server namespace")
        .unwrap_or_else(|e| panic!("binding {addr}:{port}: {e}"));
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(tests::wait())).expect("read timeout");
        let (mut pending, mut answered, mut chunk) = (Vec::new(), 0, [0u8; 4096]);
        loop {
            let n = conn.read(&mut chunk).expect("server read");
            if n == 0 {
                return answered; // the client's FIN; dropping `conn` sends ours
            }
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                pending.drain(..=end);
                conn.write_all(REPLY).expect("server write");
                answered += 1;
            }
        }
    })
}

/// One connection from namespace a to `server:port` (a server in b): flushes a's neighbour cache first (so ARP
/// is seen), then `rounds` times sends [`REQUEST`] and reads the whole [`REPLY`], then closes; waits for the
/// server to close too.
fn talk(pair: &Pair, server: &str, port: u16, rounds: usize) {
    let handle = serve(&pair.b, server, port);
    pair.a.ip(&["neigh", "flush", "dev", &pair.a_if]).expect("neigh flush");
    let target: SocketAddr = format!("{server}:{port}").parse().expect("address");
    pair.a
        .enter(move || -> std::io::Result<()> {
            let mut conn = TcpStream::connect_timeout(&target, tests::wait())?;
            conn.set_read_timeout(Some(tests::wait()))?;
            for _ in 0..rounds {
                conn.write_all(REQUEST)?;
                let mut reply = vec![0u8; REPLY.len()];
                conn.read_exact(&mut reply)?;
                assert_eq!(reply, REPLY);
            }
            Ok(()) // dropping `conn` sends the client's FIN
        })
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("client to {target}: {e}"));
    assert_eq!(handle.join().expect("server thread"), rounds);
}

// ---------------------------------------------------------------------------------------------------------------
// The agent's output

/// One line of the agent's text output: `<time> <iface> <dir> <src> → <dst> <PROTO> <len> <summary>`.
#[derive(Clone, Debug)]
struct Event {
    dir: String,
    src: String,
    dst: String,
    proto: String,
    summary: String,
}

/// Splits an output line into its fields; None when it is not an event line.
fn parse(line: &str) -> Option<Event> {
    let f: Vec<&str> = line.splitn(9, ' ').collect();
    (f.len() == 9 && f[4] == "→").then(|| Event {
        dir: f[2].into(),
        src: f[3].into(),
        dst: f[5].into(),
        proto: f[6].into(),
        // Annotations after ` · ` and the socket side after ` ⇒ ` are observer's own; the summary is tshark's.
        summary: f[8]
            .split(" ⇒ ")
            .next()
            .and_then(|s| s.split(" · ").next())
            .unwrap_or_default()
            .into(),
    })
}

impl Event {
    /// The summary after Wireshark's expert prefixes (`[TCP Retransmission] ` ...).
    fn info(&self) -> &str {
        let mut s = self.summary.as_str();
        while let Some(rest) = s.strip_prefix("[TCP ").and_then(|r| r.split_once("] ")) {
            s = rest.1;
        }
        s
    }

    /// TCP flags as printed, e.g. `SYN, ACK`.
    fn flags(&self) -> &str {
        let info = self.info();
        let start = info.find('[').map_or(0, |i| i + 1);
        let end = info.find(']').unwrap_or(start);
        &info[start..end]
    }

    /// The value of a `key=value` token of the summary.
    fn num(&self, key: &str) -> Option<u32> {
        self.summary
            .split(' ')
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim_end_matches('*').parse().ok())
    }

    /// (source port, destination port) of a TCP event.
    fn ports(&self) -> (u16, u16) {
        let mut t = self.info().split(' ');
        let sport = t.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let dport = t.nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        (sport, dport)
    }

    /// Whether this is a TCP segment in direction `dir` with exactly these flags and relative numbers.
    fn is(&self, dir: &str, flags: &str, seq: u32, ack: Option<u32>, len: u32) -> bool {
        self.proto == "TCP"
            && self.dir == dir
            && self.flags() == flags
            && self.num("Seq") == Some(seq)
            && self.num("Ack") == ack
            && self.num("Len") == Some(len)
    }
}

/// Whether an output line (text or JSON) is observer's own (a kernel event, a flow or ARP analysis, a
/// neighbour change) rather than a captured packet.
fn is_kernel_line(l: &str) -> bool {
    // A text packet line has its interface second; a given-up ARP request prints `arp` there instead.
    const TEXT: [&str; 4] = ["kernel", "analysis", "neigh", "arp"];
    const JSON: [&str; 5] = ["kernel", "analysis", "neigh", "folded", "summary"];
    let second = l.split(' ').nth(1).unwrap_or_default();
    TEXT.contains(&second) || JSON.iter().any(|k| l.contains(&format!("\"proto\":\"{k}\"")))
}

/// The packet lines of a finished run.
fn wire_lines(f: &Finished) -> usize {
    f.stdout.iter().filter(|l| !is_kernel_line(l)).count()
}

/// The events of a finished run; every stdout line must be one, or a kernel line about a socket.
fn events(f: &Finished) -> Vec<Event> {
    f.stdout
        .iter()
        .filter(|l| !is_kernel_line(l))
        .map(|l| parse(l).unwrap_or_else(|| panic!("not an event line: {l:?}\n{f:#?}")))
        .collect()
}

/// Index of the first event at or after `from` that satisfies `pred`; panics naming `what` otherwise.
fn find(events: &[Event], from: usize, what: &str, pred: impl Fn(&Event) -> bool) -> usize {
    (from..events.len())
        .find(|&i| pred(&events[i]))
        .unwrap_or_else(|| panic!("no {what} at or after event {from} in:\n{events:#?}"))
}

/// Waits (bounded) for an output line satisfying `done`, then stops the agent with `signal`; stdout is complete.
fn stop_after(mut agent: Agent, done: impl Fn(&Event) -> bool, signal: i32) -> Finished {
    let mut seen = Vec::new();
    // Not asserted here: a missing line shows up in the caller's assertions with the whole output.
    agent.wait_for(|l| parse(l).is_some_and(|e| done(&e)), tests::wait(), &mut seen);
    let mut f = agent.stop(signal).expect("stopping observer");
    seen.append(&mut f.stdout);
    f.stdout = seen;
    f
}

/// Exit 0 after SIGINT/SIGTERM, the detach line, no drops, no malformed frames, no decode errors, and every
/// record the kernel emitted printed on stdout.
fn assert_clean_exit(f: &Finished, iface: &str) {
    assert_eq!(f.code, Some(0), "{f:#?}");
    let has = |line: &str| f.stderr.iter().any(|l| l == line);
    assert!(has(&format!("observer: detached from {iface}")), "{f:#?}");
    assert!(has("dropped records (ring buffer full): 0"), "{f:#?}");
    assert!(f.stderr.iter().any(|l| l.starts_with("malformed: 0 (")), "{f:#?}");
    let n = wire_lines(f);
    assert!(
        has(&format!("records: {n} emitted, {n} printed, 0 undecodable")),
        "{f:#?}"
    );
    assert!(!f.stderr.iter().any(|l| l.contains("panicked")), "{f:#?}");
    if f.stdout.first().is_some_and(|l| l.starts_with('{')) {
        // In JSON the last line accounts for the run.
        let last: serde_json::Value =
            serde_json::from_str(f.stdout.last().expect("a line")).expect("the last line is JSON");
        assert_eq!(last["proto"], "summary", "{f:#?}");
        assert_eq!(last["printed"], n as u64, "{last}");
        assert_eq!(last["packet_ring"]["holds"], true, "{last}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// What is attached

/// Every program attached to `iface` in `ns`: bpftool's xdp and clsact entries, `ip link`'s XDP program, and
/// the TCX programs (bpftool 7.1 does not list TCX links, so they are queried with BPF_PROG_QUERY). Checked per
/// interface, never globally: parallel tests load programs of the same names.
fn attached(ns: &Netns, iface: &str) -> Vec<String> {
    let bpftool = netns::run(ns.command("bpftool").args(["net", "show", "dev", iface])).expect("bpftool net show");
    let link = ns.ip(&["link", "show", "dev", iface]).expect("ip link show");
    let mut found: Vec<String> = bpftool
        .lines()
        .filter(|l| l.starts_with(&format!("{iface}(")))
        .chain(link.lines().filter(|l| l.contains("prog/xdp")))
        .map(|l| l.trim().to_owned())
        .collect();
    if require::kernel_version().is_some_and(|v| v >= (6, 6)) {
        let name = iface.to_owned();
        let tcx = ns
            .enter(move || {
                [TcAttachType::Ingress, TcAttachType::Egress].map(|kind| {
                    let (_, progs) = SchedClassifier::query_tcx(&name, kind).expect("BPF_PROG_QUERY on tcx");
                    progs
                        .iter()
                        .map(|p| format!("tcx {kind:?} {}", p.name_as_str().unwrap_or("?")))
                        .collect::<Vec<_>>()
                })
            })
            .expect("entering the namespace");
        found.extend(tcx.into_iter().flatten());
    }
    found
}

/// Waits (bounded) until nothing is attached to `iface`, and returns what is still attached.
fn attached_after_exit(ns: &Netns, iface: &str) -> Vec<String> {
    let deadline = Instant::now() + tests::wait();
    loop {
        let left = attached(ns, iface);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of `tc filter show dev <iface> <kind>` naming program `prog`.
fn tc_filters(ns: &Netns, iface: &str, kind: &str, prog: &str) -> Vec<String> {
    netns::run(ns.command("tc").args(["filter", "show", "dev", iface, kind]))
        .expect("tc filter show")
        .lines()
        .filter(|l| l.contains(&format!(" {prog} ")))
        .map(str::to_owned)
        .collect()
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &Netns, iface: &str) -> String {
    let out = ns.ip(&["link", "show", "dev", iface]).expect("ip link show");
    let mut words = out.split_whitespace().skip_while(|w| *w != "link/ether");
    words.nth(1).expect("link/ether address").to_owned()
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

/// The agent on veth-a sees a whole connection to a server in b: ARP, handshake, data both ways and teardown,
/// with Wireshark's relative numbers and the right directions; it exits cleanly and leaves nothing attached.
#[test]
fn tc_shows_handshake_data_teardown_and_arp() {
    const NAME: &str = "tc_shows_handshake_data_teardown_and_arp";
    if !require::root(NAME) || !require::tool(NAME, "bpftool") {
        return;
    }
    let pair = Pair::new("hs", 201).expect("namespaces");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if]).expect("starting observer");
    let during = attached(&pair.a, &pair.a_if);
    assert!(during.iter().any(|p| p.contains("tc_ingress")), "{during:?}");
    assert!(during.iter().any(|p| p.contains("tc_egress")), "{during:?}");
    talk(&pair, &pair.b_addr, PORT, 1);
    let f = stop_after(agent, |e| e.is("out", "ACK", N + 2, Some(M + 2), 0), libc::SIGINT);
    assert_clean_exit(&f, &pair.a_if);
    let ev = events(&f);

    let (a, b, b_mac) = (&pair.a_addr, &pair.b_addr, mac(&pair.b, &pair.b_if));
    let who = find(&ev, 0, "who-has", |e| {
        e.proto == "ARP" && e.dir == "out" && e.dst == "Broadcast" && e.summary == format!("Who has {b}? Tell {a}")
    });
    let is_at = find(&ev, who + 1, "is-at", |e| {
        e.proto == "ARP" && e.dir == "in" && e.src == b_mac && e.summary == format!("{b} is at {b_mac}")
    });
    let syn = find(&ev, is_at + 1, "SYN", |e| {
        e.is("out", "SYN", 0, None, 0) && ["MSS=", "WS=", "SACK_PERM"].iter().all(|o| e.summary.contains(o))
    });
    let syn_ack = find(&ev, syn + 1, "SYN-ACK", |e| e.is("in", "SYN, ACK", 0, Some(1), 0));
    let ack = find(&ev, syn_ack + 1, "handshake ACK", |e| e.is("out", "ACK", 1, Some(1), 0));
    let request = find(&ev, ack + 1, "client data", |e| e.is("out", "PSH, ACK", 1, Some(1), N));
    let reply = find(&ev, request + 1, "server data", |e| {
        e.is("in", "PSH, ACK", 1, Some(N + 1), M)
    });
    let fin_a = find(&ev, reply + 1, "client FIN", |e| {
        e.is("out", "FIN, ACK", N + 1, Some(M + 1), 0)
    });
    // The server's ACK of the client's FIN may ride on its own FIN.
    find(&ev, fin_a + 1, "ACK of the client FIN", |e| {
        e.dir == "in" && e.flags().contains("ACK") && e.num("Ack") == Some(N + 2)
    });
    let fin_b = find(&ev, fin_a + 1, "server FIN", |e| {
        e.is("in", "FIN, ACK", M + 1, Some(N + 2), 0)
    });
    find(&ev, fin_b + 1, "final ACK", |e| {
        e.is("out", "ACK", N + 2, Some(M + 2), 0)
    });

    for e in ev.iter().filter(|e| e.proto == "TCP") {
        let (sport, dport) = e.ports();
        let (dir, src, dst) = if dport == PORT { ("out", a, b) } else { ("in", b, a) };
        assert!(sport == PORT || dport == PORT, "foreign segment {e:?}");
        assert_eq!((e.dir.as_str(), &e.src, &e.dst), (dir, src, dst), "{e:?}");
        assert!(
            !e.summary.contains('*'),
            "window scale unknown although the handshake was seen: {e:?}"
        );
    }
    let left = attached_after_exit(&pair.a, &pair.a_if);
    assert!(left.is_empty(), "still attached to {} after exit: {left:?}", pair.a_if);
}

/// Differential test: every TCP and ARP packet the agent prints, in order, has the Source, Destination and Info
/// tshark prints for the same packet with its default name resolution (the NICs have VMware's and VirtualBox's
/// prefixes), expert prefixes included, and both see the same number of them.
#[test]
fn tshark_agrees_on_every_segment() {
    const NAME: &str = "tshark_agrees_on_every_segment";
    if !require::root(NAME) || !require::tool(NAME, "tshark") {
        return;
    }
    let pair = Pair::new("ts", 202).expect("namespaces");
    pair.a
        .ip(&["link", "set", "dev", &pair.a_if, "address", "00:50:56:c0:00:08"])
        .expect("MAC of a");
    pair.b
        .ip(&["link", "set", "dev", &pair.b_if, "address", "08:00:27:00:00:02"])
        .expect("MAC of b");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if]).expect("starting observer");
    let mut args: Vec<String> = ["-f", "tcp or arp", "--disable-protocol", "ssh"]
        .map(str::to_owned)
        .into();
    args.extend(tshark::TCP_PREFS.map(str::to_owned));
    args.extend(tshark::field_args(&[
        "_ws.col.Source",
        "_ws.col.Destination",
        "_ws.col.Info",
    ]));
    let tshark = Tshark::start_resolving(&pair.a, &pair.a_if, &args).expect("starting tshark");
    let rounds = 10;
    talk(&pair, &pair.b_addr, PORT, rounds);
    let (total_n, total_m) = (N * rounds as u32, M * rounds as u32);
    let f = stop_after(
        agent,
        |e| e.is("out", "ACK", total_n + 2, Some(total_m + 2), 0),
        libc::SIGINT,
    );
    let theirs: Vec<String> = tshark.stop_after(wire_lines(&f));
    assert_clean_exit(&f, &pair.a_if);
    let ours = events(&f);

    assert!(
        ours.iter().all(|e| !e.summary.contains('*')),
        "unknown window scale although the handshake was seen"
    );
    // The agent prints only TCP and ARP; tshark's capture filter keeps only those.
    assert!(ours.iter().all(|e| e.proto == "TCP" || e.proto == "ARP"), "{ours:#?}");
    assert!(ours.iter().any(|e| e.proto == "ARP") && ours.iter().filter(|e| e.proto == "TCP").count() >= 10);
    assert_eq!(
        ours.len(),
        theirs.len(),
        "packet counts differ:\nours {ours:#?}\ntshark {theirs:#?}"
    );

    assert!(
        ours.iter().any(|e| e.src == "VMware_c0:00:08" && e.dst == "Broadcast"),
        "{ours:#?}"
    );
    let ours: Vec<String> = ours
        .iter()
        .map(|e| format!("{}\t{}\t{}", e.src, e.dst, e.summary))
        .collect();
    let (mut i, mut reordered, mut report) = (0, 0, String::new());
    while i < ours.len() {
        let (o, t) = (ours[i].as_str(), theirs[i].as_str());
        if o == t {
            i += 1;
            continue;
        }
        // The agent stamps a frame at its TC hook and tshark at the packet tap. Egress TC runs before the tap,
        // ingress TC after it, so when an outgoing and an incoming frame cross within microseconds the two may
        // list them in swapped order. An adjacent swap is the same packets, not a disagreement.
        let next = |v: &str, w: Option<&str>| w.is_some_and(|w| w == v);
        if next(o, theirs.get(i + 1).map(String::as_str)) && next(t, ours.get(i + 1).map(String::as_str)) {
            reordered += 1;
            i += 2;
            continue;
        }
        report += &format!("#{i}: observer {o:?}\n      tshark   {t:?}\n");
        i += 1;
    }
    eprintln!(
        "{NAME}: compared {} packets, {reordered} adjacent pairs in swapped order",
        ours.len()
    );
    assert!(report.is_empty(), "observer and tshark disagree:\n{report}");
}

/// With XDP (generic and native) the agent sees only what arrives: ARP reply, SYN-ACK, the server's data and
/// FIN as `in` lines, no `out` lines; the mode asked for is the one attached, and nothing is left after exit.
#[test]
fn xdp_hook_sees_ingress() {
    const NAME: &str = "xdp_hook_sees_ingress";
    if !require::root(NAME) || !require::tool(NAME, "bpftool") {
        return;
    }
    let pair = Pair::new("xd", 203).expect("namespaces");
    // Native XDP on veth needs no set-up: attaching enables veth-a's NAPI poll, where the program runs, and
    // turns TSO off on the peer (`ethtool -k veth-b` shows it) so that every frame the peer sends qualifies for
    // that poll instead of bypassing it. A program or GRO on the peer is only needed for XDP_REDIRECT into a veth.
    for (mode, shown) in [("generic", "xdpgeneric"), ("native", "xdp")] {
        let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--hook", "xdp", "--xdp-mode", mode])
            .unwrap_or_else(|e| panic!("starting observer with --xdp-mode {mode}: {e:#}"));
        let link = pair.a.ip(&["link", "show", "dev", &pair.a_if]).expect("ip link show");
        assert!(
            link.split_whitespace().any(|w| w == shown) && link.contains("prog/xdp") && link.contains("xdp_ingress"),
            "{mode}: expected `{shown}` with xdp_ingress in:\n{link}"
        );
        talk(&pair, &pair.b_addr, PORT, 1);
        let f = stop_after(agent, |e| e.is("in", "FIN, ACK", M + 1, Some(N + 2), 0), libc::SIGINT);
        assert_clean_exit(&f, &pair.a_if);
        let ev = events(&f);
        assert!(
            ev.iter().all(|e| e.dir == "in"),
            "{mode}: XDP printed an outgoing frame: {ev:#?}"
        );
        let b = &pair.b_addr;
        let is_at = find(&ev, 0, "is-at", |e| {
            e.proto == "ARP" && e.summary.starts_with(&format!("{b} is at "))
        });
        let syn_ack = find(&ev, is_at + 1, "SYN-ACK", |e| e.is("in", "SYN, ACK", 0, Some(1), 0));
        let reply = find(&ev, syn_ack + 1, "server data", |e| {
            e.is("in", "PSH, ACK", 1, Some(N + 1), M)
        });
        find(&ev, reply + 1, "server FIN", |e| {
            e.is("in", "FIN, ACK", M + 1, Some(N + 2), 0)
        });
        assert!(f.counter("xdp") >= ev.len() as u64, "{f:#?}");
        assert_eq!((f.counter("ingress"), f.counter("egress")), (0, 0), "{f:#?}");
        let left = attached_after_exit(&pair.a, &pair.a_if);
        assert!(left.is_empty(), "{mode}: still attached after exit: {left:?}");
    }
}

/// `--control-only` prints SYN, SYN-ACK, the handshake's ACK, both FINs and the ACKs answering them (and ARP),
/// nothing else, and counts what it left out.
#[test]
fn control_only_keeps_control_segments() {
    const NAME: &str = "control_only_keeps_control_segments";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("co", 204).expect("namespaces");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--control-only"]).expect("starting observer");
    let rounds = 3;
    talk(&pair, &pair.b_addr, PORT, rounds);
    let (n, m) = (N * rounds as u32, M * rounds as u32);
    let f = stop_after(agent, |e| e.is("out", "ACK", n + 2, Some(m + 2), 0), libc::SIGINT);
    assert_clean_exit(&f, &pair.a_if);
    let ev = events(&f);

    let syn = find(&ev, 0, "SYN", |e| e.is("out", "SYN", 0, None, 0));
    let syn_ack = find(&ev, syn + 1, "SYN-ACK", |e| e.is("in", "SYN, ACK", 0, Some(1), 0));
    let ack = find(&ev, syn_ack + 1, "handshake ACK", |e| e.is("out", "ACK", 1, Some(1), 0));
    let fin_a = find(&ev, ack + 1, "client FIN", |e| {
        e.is("out", "FIN, ACK", n + 1, Some(m + 1), 0)
    });
    find(&ev, fin_a + 1, "ACK of the client FIN", |e| {
        e.dir == "in" && e.num("Ack") == Some(n + 2)
    });
    let fin_b = find(&ev, fin_a + 1, "server FIN", |e| {
        e.is("in", "FIN, ACK", m + 1, Some(n + 2), 0)
    });
    find(&ev, fin_b + 1, "ACK of the server FIN", |e| {
        e.is("out", "ACK", n + 2, Some(m + 2), 0)
    });
    assert!(ev.iter().any(|e| e.proto == "ARP"), "ARP is always kept: {ev:#?}");

    for e in ev.iter().filter(|e| e.proto == "TCP") {
        let control = ["SYN", "FIN", "RST"].iter().any(|f| e.flags().contains(f));
        let handshake_ack = e.is("out", "ACK", 1, Some(1), 0);
        let answers_fin = e.flags() == "ACK"
            && e.num("Len") == Some(0)
            && ((e.dir == "in" && e.num("Ack") == Some(n + 2)) || (e.dir == "out" && e.num("Ack") == Some(m + 2)));
        assert!(control || handshake_ack || answers_fin, "not a control segment: {e:?}");
    }
    // Each round's request and reply at least.
    assert!(f.counter("control_only_suppressed") >= 2 * rounds as u64, "{f:#?}");
}

/// `--port` keeps the port-22 connection and ARP but not a connection to port 2222; `--host` keeps the
/// connection to (and ARP about) one of b's two addresses but not the other.
#[test]
fn filters_by_port_and_host() {
    const NAME: &str = "filters_by_port_and_host";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("fi", 205).expect("namespaces");
    let other = "10.205.0.3";
    pair.b
        .ip(&["addr", "add", &format!("{other}/24"), "dev", &pair.b_if])
        .expect("second address");
    let b = pair.b_addr.clone();
    let server_fin = |addr: &str, port: u16| {
        let addr = addr.to_owned();
        move |e: &Event| e.src == addr && e.ports().0 == port && e.flags().contains("FIN")
    };

    // The unwanted connection first: once the wanted one is printed, the other has passed the hooks too.
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--port", "22"]).expect("starting observer");
    talk(&pair, &b, 2222, 1);
    talk(&pair, &b, PORT, 1);
    let f = stop_after(agent, server_fin(&b, PORT), libc::SIGINT);
    assert_clean_exit(&f, &pair.a_if);
    let ev = events(&f);
    find(&ev, 0, "SYN to port 22", |e| {
        e.is("out", "SYN", 0, None, 0) && e.ports().1 == PORT
    });
    assert!(
        ev.iter().any(|e| e.proto == "ARP"),
        "ARP must pass a port filter: {ev:#?}"
    );
    let leaked: Vec<_> = ev
        .iter()
        .filter(|e| e.proto == "TCP" && e.ports().0 != PORT && e.ports().1 != PORT)
        .collect();
    assert!(leaked.is_empty(), "--port 22 printed other ports: {leaked:#?}");
    assert!(f.counter("filtered") > 0, "{f:#?}");

    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--host", other]).expect("starting observer");
    talk(&pair, &b, PORT, 1);
    talk(&pair, other, PORT, 1);
    let f = stop_after(agent, server_fin(other, PORT), libc::SIGINT);
    assert_clean_exit(&f, &pair.a_if);
    let ev = events(&f);
    find(&ev, 0, "SYN to the other address", |e| {
        e.is("out", "SYN", 0, None, 0) && e.dst == other
    });
    find(&ev, 0, "who-has for the other address", |e| {
        e.proto == "ARP" && e.summary == format!("Who has {other}? Tell {}", pair.a_addr)
    });
    let leaked: Vec<_> = ev
        .iter()
        .filter(|e| {
            if e.proto == "TCP" {
                e.src != other && e.dst != other
            } else {
                !e.summary.contains(other)
            }
        })
        .collect();
    assert!(leaked.is_empty(), "--host {other} printed other hosts: {leaked:#?}");
    assert!(f.counter("filtered") > 0, "{f:#?}");
}

/// Mistakes get one line on stderr and a non-zero exit, never a panic: an unknown interface (the line lists the
/// real ones), missing privileges (names the capabilities and sudo), too many `--port`, values that make no
/// sense (a port, a flow table, a count or an interval of 0).
#[test]
fn errors_are_one_line_and_non_zero() {
    const NAME: &str = "errors_are_one_line_and_non_zero";
    if !require::root(NAME) || !require::tool(NAME, "setpriv") {
        return;
    }
    // A namespace of its own: only `lo` exists there, and nothing on the host is touched if a check fails open.
    let ns = Netns::new("er").expect("namespace");
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let nine_ports: Vec<String> = (1..=9).flat_map(|p| ["--port".to_owned(), p.to_string()]).collect();
    let nine_ports: Vec<&str> = ["--iface", "lo"]
        .into_iter()
        .chain(nine_ports.iter().map(String::as_str))
        .collect();
    // (what, run as, arguments, words the one stderr line must contain)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 7] = [
        (
            "unknown interface",
            &[],
            &["--iface", "nosuch0"],
            &["nosuch0", "interfaces here: lo"],
        ),
        (
            "unprivileged",
            &nobody,
            &["--iface", "lo"],
            &[
                "CAP_BPF (to load the eBPF programs)",
                "CAP_NET_ADMIN (to attach them to the interface)",
                "sudo",
            ],
        ),
        ("nine --port", &[], &nine_ports, &["at most 8", "--port", "got 9"]),
        ("--port 0", &[], &["--port", "0"], &["'--port <PORT>'", "at least 1"]),
        (
            "--max-flows 0",
            &[],
            &["--max-flows", "0"],
            &["'--max-flows <N>'", "at least 1"],
        ),
        (
            "--count 0",
            &[],
            &["watch", "--count", "0"],
            &["'--count <N>'", "at least 1"],
        ),
        (
            "queues --interval-ms 0",
            &[],
            &["queues", "--interval-ms", "0"],
            &["'--interval-ms <MS>'", "at least 10"],
        ),
    ];
    for (what, prefix, args, words) in cases {
        let f = agent::run(&ns, prefix, args);
        assert!(f.code.is_some_and(|c| c != 0), "{what}: {f:#?}");
        assert_eq!(f.stderr.len(), 1, "{what}: expected one stderr line: {f:#?}");
        let line = &f.stderr[0];
        assert!(
            words.iter().all(|w| line.contains(w)),
            "{what}: {line:?} lacks one of {words:?}"
        );
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("panicked") && !lower.contains("backtrace"),
            "{what}: {line:?}"
        );
        assert!(f.stdout.is_empty(), "{what}: {f:#?}");
    }
}

/// SIGKILL: TCX links go with the process; legacy netlink filters stay (which proves the check can see them),
/// and the next `--tc-attach netlink` run removes the stale one, works, and leaves none after SIGINT.
#[test]
fn sigkill_leaves_nothing_attached() {
    const NAME: &str = "sigkill_leaves_nothing_attached";
    if !require::root(NAME) || !require::tool(NAME, "bpftool") || !require::tool(NAME, "tc") {
        return;
    }
    let pair = Pair::new("kl", 207).expect("namespaces");
    let (ns, iface) = (&pair.a, pair.a_if.as_str());

    if !require::kernel_supports(NAME, 6, 6, "TCX links") {
        // The documented answer on an older kernel: one line naming the feature and the fallback.
        let f = agent::run(ns, &[], &["--iface", iface, "--tc-attach", "tcx"]);
        assert_eq!(f.code, Some(1), "{f:#?}");
        assert!(
            f.stderr
                .iter()
                .any(|l| l.contains("TCX links need Linux 6.6") && l.contains("--tc-attach netlink")),
            "{f:#?}"
        );
    } else {
        let mut agent = Agent::start(ns, &["--iface", iface, "--tc-attach", "tcx"]).expect("starting observer");
        let during = attached(ns, iface);
        assert!(during.iter().any(|p| p == "tcx Ingress tc_ingress"), "{during:?}");
        assert!(during.iter().any(|p| p == "tcx Egress tc_egress"), "{during:?}");
        let f = agent.stop(libc::SIGKILL).expect("killing observer");
        assert_eq!(f.code, None, "{f:#?}");
        let left = attached_after_exit(ns, iface);
        assert!(left.is_empty(), "TCX links outlived a killed agent: {left:?}");
    }

    let args = ["--iface", iface, "--tc-attach", "netlink"];
    let mut agent = Agent::start(ns, &args).expect("starting observer");
    assert_eq!(tc_filters(ns, iface, "ingress", "tc_ingress").len(), 1);
    assert_eq!(agent.stop(libc::SIGKILL).expect("killing observer").code, None);
    let stale = tc_filters(ns, iface, "ingress", "tc_ingress");
    assert_eq!(
        stale.len(),
        1,
        "a legacy filter outlives its process; the check must see it: {stale:?}"
    );

    let agent = Agent::start(ns, &args).expect("starting observer again");
    let ingress = tc_filters(ns, iface, "ingress", "tc_ingress");
    let egress = tc_filters(ns, iface, "egress", "tc_egress");
    assert_eq!(
        (ingress.len(), egress.len()),
        (1, 1),
        "stale filter not replaced:\n{ingress:?}\n{egress:?}"
    );
    assert_ne!(ingress, stale, "the filter is still the killed run's");
    talk(&pair, &pair.b_addr, PORT, 1);
    let f = stop_after(agent, |e| e.is("out", "ACK", N + 2, Some(M + 2), 0), libc::SIGINT);
    assert_clean_exit(&f, iface);
    let ev = events(&f);
    find(&ev, 0, "SYN", |e| e.is("out", "SYN", 0, None, 0));
    find(&ev, 0, "server data", |e| e.is("in", "PSH, ACK", 1, Some(N + 1), M));
    let left = [("ingress", "tc_ingress"), ("egress", "tc_egress")].map(|(k, p)| tc_filters(ns, iface, k, p));
    assert!(left.iter().all(Vec::is_empty), "filters left after SIGINT: {left:?}");
    let left = attached_after_exit(ns, iface);
    assert!(left.is_empty(), "still attached after exit: {left:?}");
}

/// SIGTERM detaches and reports like SIGINT.
#[test]
fn sigterm_detaches_and_reports() {
    const NAME: &str = "sigterm_detaches_and_reports";
    if !require::root(NAME) || !require::tool(NAME, "bpftool") {
        return;
    }
    let pair = Pair::new("tm", 208).expect("namespaces");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if]).expect("starting observer");
    talk(&pair, &pair.b_addr, PORT, 1);
    let f = stop_after(agent, |e| e.is("out", "ACK", N + 2, Some(M + 2), 0), libc::SIGTERM);
    assert_clean_exit(&f, &pair.a_if);
    find(&events(&f), 0, "final ACK", |e| {
        e.is("out", "ACK", N + 2, Some(M + 2), 0)
    });
    assert!(f.counter("ingress") > 0 && f.counter("egress") > 0, "{f:#?}");
    let left = attached_after_exit(&pair.a, &pair.a_if);
    assert!(left.is_empty(), "still attached after SIGTERM: {left:?}");
}

/// VLAN ids reach the record both ways a tag can arrive. At TC ingress the kernel has already moved the
/// outer tag of a received frame into the skb's metadata (skb_vlan_untag runs before TC), so the record's
/// first id comes from there and an inner one from the frame; at XDP both tags are still in the frame.
/// The tagged frames are the oracle's, sent raw from the peer namespace over the test's own veth pair.
#[test]
fn vlan_ids_at_tc_and_xdp() {
    const NAME: &str = "vlan_ids_at_tc_and_xdp";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("vl", 209).expect("namespaces");
    for hook in ["tc", "xdp"] {
        let file = std::env::temp_dir().join(format!("observer-vlan-{}-{hook}.pcapng", std::process::id()));
        let write = file.to_string_lossy().into_owned();
        let mut agent = Agent::start(
            &pair.a,
            &["--iface", &pair.a_if, "--hook", hook, "--json", "--write", &write],
        )
        .expect("starting observer");
        pair.b
            .inject(&pair.b_if, vec![oracle::vlan_tcp(), oracle::double_vlan_tcp()]);
        let mut seen = Vec::new();
        // The double-tagged frame is sent last: once it is printed, the other one has passed the hook too.
        agent.wait_for(|l| l.contains(r#""vlan":[200,100]"#), tests::wait(), &mut seen);
        let mut f = agent.stop(libc::SIGINT).expect("stopping observer");
        seen.append(&mut f.stdout);
        f.stdout = seen;
        assert_clean_exit(&f, &pair.a_if);
        let vlans: Vec<serde_json::Value> = f
            .stdout
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|r| r["proto"] == "tcp" && r["direction"] == "in")
            .map(|r| r["vlan"].clone())
            .collect();
        assert_eq!(
            vlans,
            [serde_json::json!([100]), serde_json::json!([200, 100])],
            "{hook}: {f:#?}"
        );
        // The pcapng holds the tags too, as sent (the outer one is an 802.1ad service tag): at TC the outer one
        // comes from the skb's metadata and is put back with its TPID.
        let fields = ["-Y", "tcp", "-T", "fields", "-e", "ieee8021ad.id", "-e", "vlan.id"];
        let args: Vec<String> = fields.map(str::to_owned).into();
        let read = tshark::read(&file, &args);
        let _ = std::fs::remove_file(&file);
        if require::tool(NAME, "tshark") {
            assert_eq!(
                read.expect("tshark -r"),
                ["\t100", "200\t100"],
                "{hook}: VLAN ids in the pcapng"
            );
        }
    }
}

/// `--count N` ends the run by itself after exactly N lines, and `--ebpf-log` shows the programs' own
/// diagnostics (with counter names) and nothing of aya's.
#[test]
fn count_and_ebpf_log() {
    const NAME: &str = "count_and_ebpf_log";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("ct", 210).expect("namespaces");
    let mut agent =
        Agent::start(&pair.a, &["--iface", &pair.a_if, "--count", "3", "--ebpf-log"]).expect("starting observer");
    talk(&pair, &pair.b_addr, PORT, 2);
    let f = agent
        .wait_exit(tests::wait())
        .expect("observer ends after --count events");
    assert_eq!(f.code, Some(0), "{f:#?}");
    assert_eq!(wire_lines(&f), 3, "{f:#?}");
    assert!(
        f.stderr
            .iter()
            .any(|l| l.starts_with("records: ") && l.ends_with(" emitted, 3 printed, 0 undecodable")),
        "{f:#?}"
    );
    let logs: Vec<&String> = f.stderr.iter().filter(|l| l.starts_with('[')).collect();
    assert!(
        logs.iter()
            .any(|l| l.starts_with("[DEBUG observer] tc hook") && l.ends_with("record emitted")),
        "{f:#?}"
    );
    assert!(
        logs.iter().all(|l| l.starts_with("[DEBUG observer] ")),
        "only the programs' logs: {logs:#?}"
    );
}

/// Two observers on one interface both see the whole connection, and the first one's exit leaves the second
/// attached and seeing the next connection.
#[test]
fn two_observers_on_one_interface() {
    const NAME: &str = "two_observers_on_one_interface";
    if !require::root(NAME) {
        return;
    }
    // TCX links (or clsact where the kernel has no TCX), then legacy filters: a second observer must not take
    // the first one's filters for a killed run's.
    two_observers(&[]);
    two_observers(&["--tc-attach", "netlink"]);
}

fn two_observers(attach: &[&str]) {
    let pair = Pair::new("two", 211).expect("namespaces");
    let mut args = vec!["--iface", pair.a_if.as_str()];
    args.extend_from_slice(attach);
    let first = Agent::start(&pair.a, &args).expect("starting the first observer");
    let mut second = Agent::start(&pair.a, &args).expect("starting the second observer");
    talk(&pair, &pair.b_addr, PORT, 1);
    let last_ack = |e: &Event| e.is("out", "ACK", N + 2, Some(M + 2), 0);
    let f = stop_after(first, last_ack, libc::SIGINT);
    assert_clean_exit(&f, &pair.a_if);
    find(&events(&f), 0, "the first's SYN", |e| e.is("out", "SYN", 0, None, 0));
    let mut seen = Vec::new();
    assert!(
        second.wait_for(|l| parse(l).is_some_and(|e| last_ack(&e)), tests::wait(), &mut seen),
        "the second observer saw the first connection: {seen:#?}"
    );
    let syns = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| parse(l).is_some_and(|e| e.is("out", "SYN", 0, None, 0)))
            .count()
    };
    assert_eq!(syns(&seen), 1, "{seen:#?}");
    talk(&pair, &pair.b_addr, PORT + 1, 1);
    let mut f = stop_after(second, last_ack, libc::SIGINT);
    seen.append(&mut f.stdout);
    f.stdout = seen;
    assert_clean_exit(&f, &pair.a_if);
    assert_eq!(syns(&f.stdout), 2, "the second observer saw both connections: {f:#?}");
}
