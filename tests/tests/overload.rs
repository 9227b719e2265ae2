//! The agent under more than it can take: stopped (SIGSTOP) while a flood fills its packet ring, then resumed.
//! What the user cannot lose must still arrive, and the exit report must say exactly what was lost where.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use serde_json::Value;
use tests::{
    agent::{Agent, Finished},
    netns::{Netns, Pair},
    require,
};

/// The flood's sink.
const SINK_PORT: u16 = 5001;
/// The port of the short connections made while the agent is stopped.
const SHORT_PORT: u16 = 5002;
/// How many short connections.
const SHORT: usize = 20;
/// 64-byte writes without Nagle: each its own segment, well past a 1 MiB ring of ~160-byte records.
const FLOOD_WRITES: usize = 40_000;

/// A listener on `addr:port` in `ns`, its connections handled by `serve` on a thread each, for as long as the test.
fn listen(ns: &Netns, addr: &str, port: u16, serve: fn(TcpStream)) {
    let bind = format!("{addr}:{port}");
    let listener = ns
        .enter(move || TcpListener::bind(&bind))
        .expect("entering the server namespace")
        .unwrap_or_else(|e| panic!("binding {addr}:{port}: {e}"));
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || serve(conn));
        }
    });
}

/// Reads until the peer closes.
fn sink(mut conn: TcpStream) {
    let mut chunk = [0u8; 65536];
    while conn.read(&mut chunk).is_ok_and(|n| n > 0) {}
}

/// From `ns`, a connection to `to` whose client end runs `f`.
fn client<T: Send + 'static>(ns: &Netns, to: SocketAddr, f: impl FnOnce(TcpStream) -> T + Send + 'static) -> T {
    ns.enter(move || f(TcpStream::connect_timeout(&to, tests::wait()).expect("connect")))
        .expect("entering the client namespace")
}

/// The transitions the run printed for the connection from client port `port`: on its segments' lines
/// (`socket.transitions`) and on kernel lines of its own.
fn transitions_of(f: &Finished, port: u16) -> Vec<(String, String)> {
    let remote = format!(":{port}");
    let mut out = Vec::new();
    for v in f.stdout.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let upper = |s: &Value| s.as_str().map(kernel_name).unwrap_or_default();
        match v["proto"].as_str() {
            Some("tcp") if v["sport"] == port || v["dport"] == port => {
                for t in v["socket"]["transitions"].as_array().into_iter().flatten() {
                    out.push((upper(&t[0]), upper(&t[1])));
                }
            }
            Some("kernel") if v["event"] == "state" && v["remote"].as_str().is_some_and(|r| r.ends_with(&remote)) => {
                out.push((upper(&v["old"]), upper(&v["new"])));
            }
            _ => {}
        }
    }
    out
}

/// The kernel's name of a state as a segment line's JSON spells it (`SynRecv` is `SYN_RECV`).
fn kernel_name(s: &str) -> String {
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return s.to_owned();
    }
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Runs the agent with `--ring-mb 1` and `extra` on a new pair, stops it (SIGSTOP), floods its interface with
/// 64-byte segments and makes [`SHORT`] short connections meanwhile, resumes it (SIGCONT) and stops it once the
/// last connection shows. Returns the run, the short connections' client ports and the segments both namespaces'
/// kernels retransmitted meanwhile (`RetransSegs`).
fn stopped_during_a_flood(tag: &str, subnet: u8, extra: &[&str]) -> (Finished, Vec<u16>, u64) {
    let pair = Pair::new(tag, subnet).expect("veth pair");
    listen(&pair.b, &pair.b_addr, SINK_PORT, sink);
    // The server closes first, so each connection goes through the whole teardown on the server's side too.
    listen(&pair.b, &pair.b_addr, SHORT_PORT, drop);
    let mut args = vec!["watch", "-i", &pair.b_if, "--json", "--ring-mb", "1"];
    args.extend(extra);
    let mut agent = Agent::start(&pair.b, &args).expect("agent");

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) }, 0, "SIGSTOP");
    let sink_at: SocketAddr = format!("{}:{SINK_PORT}", pair.b_addr).parse().expect("address");
    client(&pair.a, sink_at, |mut c| {
        c.set_nodelay(true).expect("TCP_NODELAY");
        for _ in 0..FLOOD_WRITES {
            c.write_all(&[0x5a; 64]).expect("flood write");
        }
    });
    let short_at: SocketAddr = format!("{}:{SHORT_PORT}", pair.b_addr).parse().expect("address");
    let ports: Vec<u16> = (0..SHORT)
        .map(|_| {
            client(&pair.a, short_at, |mut c| {
                let port = c.local_addr().expect("local address").port();
                // The server's FIN: the connection is closed at both ends before the next one.
                c.set_read_timeout(Some(tests::wait())).expect("read timeout");
                let _ = c.read(&mut [0u8; 1]);
                port
            })
        })
        .collect();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) }, 0, "SIGCONT");

    // Wait (bounded) for the last connection's FIN_WAIT2, then stop; a miss shows in the assertions.
    let last = format!(":{}\"", ports[SHORT - 1]);
    let mut seen = Vec::new();
    agent.wait_for(
        |l| l.contains(&last) && (l.contains("FIN_WAIT2") || l.contains("FinWait2")),
        tests::wait(),
        &mut seen,
    );
    // The folded lines come each second.
    thread::sleep(Duration::from_millis(1500));
    let mut f = agent.stop(libc::SIGINT).expect("stopping observer");
    seen.append(&mut f.stdout);
    f.stdout = seen;
    assert_eq!(f.code, Some(0), "{:#?}", f.stderr);
    let retransmitted = retrans_segs(&pair.a) + retrans_segs(&pair.b);
    (f, ports, retransmitted)
}

/// The namespace's `Tcp: RetransSegs` from /proc/net/snmp (the namespace of the thread reading it).
fn retrans_segs(ns: &Netns) -> u64 {
    let snmp = ns
        .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("entering the namespace")
        .expect("reading /proc/net/snmp");
    let tcp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|l| l.starts_with("Tcp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let [names, values] = &tcp[..] else {
        panic!("no Tcp lines in /proc/net/snmp: {snmp}");
    };
    let at = names.iter().position(|n| *n == "RetransSegs").expect("RetransSegs");
    values[at].parse().expect("RetransSegs value")
}

/// The number after `prefix` on the report line that starts with it.
fn reported(f: &Finished, prefix: &str) -> u64 {
    f.stderr
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split([' ', ',']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}N` in the report: {:#?}", f.stderr))
}

/// Each ring's identity line says it holds, and the last JSON line, the summary, gives the same account: its
/// outcomes add up to what was seen.
fn assert_identities_hold(f: &Finished) {
    let summary = f
        .stdout
        .last()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["proto"] == "summary")
        .unwrap_or_else(|| panic!("the last line is no summary: {:?}", f.stdout.last()));
    for (ring, key) in [
        ("packet ring: seen ", "packet_ring"),
        ("socket ring: seen ", "socket_ring"),
    ] {
        let line = f
            .stderr
            .iter()
            .find(|l| l.starts_with(ring))
            .unwrap_or_else(|| panic!("no `{ring}` line: {:#?}", f.stderr));
        assert!(line.ends_with("(holds)"), "{line}");
        let account = summary[key]
            .as_object()
            .unwrap_or_else(|| panic!("no {key}: {summary}"));
        let seen = account["seen"].as_u64().expect("seen");
        let outcomes: u64 = account
            .iter()
            .filter(|(k, _)| !["seen", "holds"].contains(&k.as_str()))
            .map(|(_, v)| v.as_u64().expect("a count"))
            .sum();
        assert_eq!(
            (outcomes, account["holds"].as_bool()),
            (seen, Some(true)),
            "{key}: {summary}"
        );
        assert!(line.starts_with(&format!("{ring}{seen} = ")), "{line} vs {summary}");
    }
}

/// Every short connection's state changes on the server: LISTEN→SYN_RECV→ESTABLISHED.
fn assert_every_handshake_state(f: &Finished, ports: &[u16]) {
    for &port in ports {
        let seen = transitions_of(f, port);
        for want in [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")] {
            assert!(
                seen.iter().any(|(a, b)| (a.as_str(), b.as_str()) == want),
                "client port {port}: no {}→{} among {seen:?}",
                want.0,
                want.1
            );
        }
    }
}

/// The flags of the segment lines of the connection from client port `port`, as (from client, flags).
fn segments_of(f: &Finished, port: u16) -> Vec<(bool, Vec<String>)> {
    f.stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["proto"] == "tcp" && (v["sport"] == port || v["dport"] == port))
        .map(|v| {
            let flags = v["flags"].as_array().into_iter().flatten();
            (
                v["sport"] == port,
                flags.filter_map(|f| f.as_str().map(str::to_owned)).collect(),
            )
        })
        .collect()
}

#[test]
fn socket_events_survive_a_packet_ring_overflow_while_the_agent_is_stopped() {
    if !require::root("socket_events_survive_a_packet_ring_overflow") {
        return;
    }
    // No folding: the flood fills the packet ring.
    let (f, ports, _) = stopped_during_a_flood("ov", 242, &["--fold-above", "0"]);
    assert!(
        reported(&f, "dropped records (ring buffer full): ") > 0,
        "the flood never filled the 1 MiB packet ring: {:#?}",
        f.stderr
    );
    assert_eq!(
        f.count_before("socket events:", "lost"),
        Some(0),
        "socket events were lost beside a full packet ring: {:#?}",
        f.stderr
    );
    assert_eq!(reported(&f, "folded: "), 0);
    assert_identities_hold(&f);
    assert_every_handshake_state(&f, &ports);
}

#[test]
fn above_the_high_water_mark_data_is_folded_and_every_control_segment_kept() {
    if !require::root("above_the_high_water_mark_data_is_folded") {
        return;
    }
    let (f, ports, retransmitted) = stopped_during_a_flood("of", 243, &[]);
    let folded = reported(&f, "folded: ");
    assert!(folded > 0, "nothing was folded: {:#?}", f.stderr);
    assert_eq!(
        reported(&f, "dropped records (ring buffer full): "),
        0,
        "{:#?}",
        f.stderr
    );
    assert_identities_hold(&f);
    assert_every_handshake_state(&f, &ports);
    // Every control segment of every short connection has its line.
    for &port in &ports {
        let segs = segments_of(&f, port);
        let has = |from_client: bool, flags: &[&str]| segs.iter().any(|(c, fl)| *c == from_client && fl == flags);
        for (from_client, flags) in [
            (true, &["SYN"][..]),
            (false, &["SYN", "ACK"][..]),
            (false, &["FIN", "ACK"][..]),
            (true, &["FIN", "ACK"][..]),
        ] {
            assert!(has(from_client, flags), "client port {port}: no {flags:?} in {segs:?}");
        }
        // The handshake's ACK: the client's first pure ACK.
        assert!(has(true, &["ACK"]), "client port {port}: no handshake ACK in {segs:?}");
    }
    // The flood's own teardown too: its FINs and the ACK answering the last one are recorded.
    let all = SHORT + 1;
    assert!(
        f.stderr
            .iter()
            .any(|l| l.starts_with(&format!("connections: {all} opened, {all} closed ({all} FIN, 0 RST)"))),
        "{:#?}",
        f.stderr
    );
    // The folded lines name the flood's flow and add up to the counter.
    let lines: Vec<Value> = f
        .stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["proto"] == "folded")
        .collect();
    assert!(!lines.is_empty(), "no folded line");
    let sink = format!(":{SINK_PORT}");
    assert!(
        lines.iter().all(|v| v["lo"]
            .as_str()
            .into_iter()
            .chain(v["hi"].as_str())
            .any(|e| e.ends_with(&sink))),
        "{lines:?}"
    );
    let in_lines: u64 = lines.iter().filter_map(|v| v["packets"].as_u64()).sum();
    assert_eq!(in_lines, folded, "{lines:?}");
    // Folded retransmissions are segments the kernels did send again: never more than they count.
    let again: u64 = lines
        .iter()
        .map(|v| {
            let n = v["retransmits"].as_u64().expect("retransmits");
            assert!(n <= v["packets"].as_u64().unwrap_or(0), "{v}");
            n
        })
        .sum();
    assert!(
        again <= retransmitted,
        "{again} folded retransmissions, the kernels sent {retransmitted} again"
    );
}
