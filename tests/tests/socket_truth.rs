//! Socket truth end to end: the agent's wire lines carry the kernel's socket side, and its numbers match what
//! the kernel's own counters, `ss` and `netstat` say at the same moment.
//!
//! Each test builds its own veth pair (subnets 221-223); the agent runs inside the server's or the client's
//! namespace with `ip netns exec`, as a user would run it inside a guest.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd as _,
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent::{Agent, Finished},
    netns::{self, Netns, Pair},
    require,
};

/// A listener on `addr:port` in `ns` with this listen() backlog; it never accepts unless the caller does.
fn listen(ns: &Netns, addr: &str, port: u16, backlog: i32) -> TcpListener {
    let bind: SocketAddr = format!("{addr}:{port}").parse().expect("address");
    ns.enter(move || -> std::io::Result<TcpListener> {
        // std's TcpListener always listens with 128: build the socket by hand for a small backlog.
        // SAFETY: plain socket calls on a fresh fd that the TcpListener then owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let listener = TcpListener::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            );
            let SocketAddr::V4(v4) = bind else {
                unreachable!("IPv4 only")
            };
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            if libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            ) != 0
                || libc::listen(fd, backlog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(listener)
        }
    })
    .expect("entering the server namespace")
    .expect("listening")
}

/// Connects from `ns` to `target` on a thread; the thread returns the stream or the error.
fn connect(ns: &Netns, target: SocketAddr, timeout: Duration) -> thread::JoinHandle<std::io::Result<TcpStream>> {
    ns.spawn(move || TcpStream::connect_timeout(&target, timeout))
        .expect("entering the client namespace")
}

/// `n` connections from `ns` to `target`, one after the other, each established.
fn connected(ns: &Netns, target: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            connect(ns, target, tests::wait())
                .join()
                .expect("client thread")
                .expect("connect")
        })
        .collect()
}

/// TcpExt counters of `ns`, read from the kernel's own /proc/net/netstat inside it.
fn tcpext(ns: &Netns) -> std::collections::BTreeMap<String, u64> {
    let text = netns::run(ns.command("cat").arg("/proc/net/netstat")).expect("reading /proc/net/netstat");
    observer::sys::sockets::tcpext::parse(&text, "/proc/net/netstat")
        .expect("TcpExt counters")
        .all
}

/// `ss -ltn` rows of `ns` for local `addr:port`: (Recv-Q, Send-Q).
fn ss_listener(ns: &Netns, local: &str) -> (u32, u32) {
    let out = netns::run(ns.command("ss").args(["-ltnH"])).expect("ss -ltn");
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[3] == local)
        .map(|f| (f[1].parse().expect("Recv-Q"), f[2].parse().expect("Send-Q")))
        .unwrap_or_else(|| panic!("no listener {local} in ss -ltn:\n{out}"))
}

/// `netstat -ant` rows of `ns`: (local, foreign, state).
fn netstat(ns: &Netns) -> Vec<(String, String, String)> {
    let out = netns::run(ns.command("netstat").args(["-ant"])).expect("netstat -ant");
    out.lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 6)
        .map(|f| (f[3].to_owned(), f[4].to_owned(), f[5].to_owned()))
        .collect()
}

/// The listener row of `observer queues --once --json` for `local`.
fn queues_row(ns: &Netns, local: &str) -> serde_json::Value {
    let bin = tests::agent::binary().expect("agent binary");
    let out = netns::run(
        ns.command(bin.to_str().expect("path"))
            .args(["queues", "--once", "--json"]),
    )
    .expect("observer queues --once --json");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("queues JSON");
    v["listeners"]
        .as_array()
        .expect("listeners array")
        .iter()
        .find(|r| r["addr"] == local)
        .cloned()
        .unwrap_or_else(|| panic!("no row for {local} in {out}"))
}

/// sock_diag and /proc/net/tcp{,6} read inside `ns` list the same sockets with the same states and queues.
fn netlink_agrees_with_proc(ns: &Netns) {
    type Row = (String, String, &'static str, u32, u32);
    let (diag, proc) = ns
        .enter(|| {
            let key = |s: &observer::sys::sockets::Socket| -> Row {
                (
                    s.local.to_string(),
                    s.remote.to_string(),
                    s.state.name(),
                    s.recv_q,
                    s.send_q,
                )
            };
            let mut diag: Vec<Row> = observer::sys::sockets::diag::Diag::open()
                .expect("sock_diag")
                .dump(&observer::sys::sockets::diag::Query::all())
                .expect("dump")
                .iter()
                .map(key)
                .collect();
            let mut proc: Vec<Row> = observer::sys::sockets::procfs::read_table()
                .expect("/proc/net/tcp")
                .iter()
                .map(|r| key(&r.socket))
                .collect();
            diag.sort();
            proc.sort();
            (diag, proc)
        })
        .expect("entering the namespace");
    assert!(!diag.is_empty());
    assert_eq!(diag, proc, "sock_diag vs /proc/net/tcp{{,6}}");
}

/// `observer compare` in `ns` exits 0 and says so; returns its output.
fn compare_agrees(ns: &Netns) -> String {
    let bin = tests::agent::binary().expect("agent binary");
    let out = ns
        .command(bin.to_str().expect("path"))
        .arg("compare")
        .output()
        .expect("running observer compare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "observer compare found differences:\n{text}");
    text
}

fn until(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + tests::wait();
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Output lines of a finished agent that are wire lines with a socket side (`... ⇒ ...`).
fn linked(f: &Finished) -> Vec<&str> {
    f.stdout
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains(" ⇒ "))
        .collect()
}

#[test]
fn accept_queue_overflow_is_labelled_one_for_one_with_listen_overflows() {
    if !require::root("accept_queue_overflow") || !require::tool("accept_queue_overflow", "ss") {
        return;
    }
    let pair = Pair::new("aq", 221).expect("veth pair");
    let port = 8080;
    let local = format!("{}:{port}", pair.b_addr);
    let target: SocketAddr = local.parse().expect("address");
    let _listener = listen(&pair.b, &pair.b_addr, port, 4);
    let agent = Agent::start(&pair.b, &["watch", "-i", &pair.b_if, "--port", &port.to_string()]).expect("agent");
    let before = tcpext(&pair.b);

    // Fill the accept queue: with backlog 4 the kernel queues 5 (it drops only when the count exceeds the limit).
    let first: Vec<TcpStream> = connected(&pair.a, target, 5);
    assert!(
        until(|| ss_listener(&pair.b, &local).0 == 5),
        "accept queue never reached 5"
    );
    // Every later SYN is dropped at the listener; each client retransmits its SYN at 1 s and 3 s.
    const LATE: usize = 15;
    let late: Vec<_> = (0..LATE)
        .map(|_| connect(&pair.a, target, Duration::from_millis(3500)))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let row = queues_row(&pair.b, &local);
    let (recv_q, send_q) = ss_listener(&pair.b, &local);
    assert_eq!(
        (row["accept"].as_u64(), row["limit"].as_u64()),
        (Some(u64::from(recv_q)), Some(u64::from(send_q)))
    );
    assert_eq!((recv_q, send_q), (5, 4));
    // The late SYNs' first drops: the kernel counts them as they arrive, later on a slow guest.
    let mut mid = tcpext(&pair.b);
    assert!(
        until(|| {
            mid = tcpext(&pair.b);
            mid["ListenOverflows"] > before["ListenOverflows"]
        }),
        "no ListenOverflows for SYNs sent to a full accept queue"
    );
    for c in late {
        assert!(
            c.join().expect("client thread").is_err(),
            "a late client got through a full accept queue"
        );
    }
    // The SYN-SENT clients never show on the server: no SYN_RECV rows, the case netstat users misread.
    assert!(
        !netstat(&pair.b).iter().any(|r| r.2 == "SYN_RECV"),
        "{:?}",
        netstat(&pair.b)
    );
    // Every late client's SYN overflowed at least once (its retransmissions add more when the guest is quick
    // enough for them to fall within the clients' wait; a slow one may count all before `mid` is read).
    let after = tcpext(&pair.b);
    assert!(
        after["ListenOverflows"] - before["ListenOverflows"] >= LATE as u64
            && after["ListenOverflows"] >= mid["ListenOverflows"],
        "ListenOverflows {} -> {} -> {} for {LATE} clients refused by a full accept queue",
        before["ListenOverflows"],
        mid["ListenOverflows"],
        after["ListenOverflows"]
    );
    let overflows = after["ListenOverflows"] - before["ListenOverflows"];
    assert!(after["ListenDrops"] - before["ListenDrops"] >= overflows);
    let row = queues_row(&pair.b, &local);
    assert!(row["established"].as_u64() == Some(5), "{row}");
    // The listener's own drop count: ss -m prints it as skmem's d<n>; here every ListenDrop was this listener's.
    let ssm = netns::run(pair.b.command("ss").args(["-ltnmH"])).expect("ss -ltnm");
    let ss_drops: u64 = ssm
        .split(|c: char| c == ',' || c == ')' || c.is_whitespace())
        .find_map(|t| t.strip_prefix('d')?.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in ss -ltnm: {ssm}"));
    assert_eq!(row["drops"].as_u64(), Some(ss_drops), "{row} vs {ssm}");
    assert_eq!(ss_drops, after["ListenDrops"] - before["ListenDrops"]);
    // The live view: snapshots that follow state changes agree with the one-shot table.
    let bin = tests::agent::binary().expect("agent binary");
    let live = netns::run(pair.b.command(bin.to_str().expect("path")).args([
        "queues",
        "--json",
        "--count",
        "2",
        "--interval-ms",
        "300",
    ]))
    .expect("observer queues --json --count 2");
    let snapshots: Vec<serde_json::Value> = live
        .lines()
        .map(|l| serde_json::from_str(l).expect("queues JSON line"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{live}");
    for snap in &snapshots {
        let r = snap["listeners"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["addr"] == local.as_str()));
        let r = r.unwrap_or_else(|| panic!("no row for {local}: {snap}"));
        assert_eq!(
            (r["accept"].as_u64(), r["limit"].as_u64(), r["established"].as_u64()),
            (Some(5), Some(4), Some(5))
        );
    }
    compare_agrees(&pair.b);

    let finished = agent_stop(agent);
    assert_labelled(
        &finished,
        "DROPPED: accept queue full (ListenOverflows",
        overflows,
        (45, "15 clients x 3 SYNs should all be dropped"),
    );
    let accepted = linked(&finished)
        .iter()
        .filter(|l| l.contains("[SYN]") && !l.contains("DROPPED") && l.contains(&local))
        .count();
    assert_eq!(accepted, 5, "the first five SYNs met a listener with room");
    drop(first);
}

/// Stops the agent; with OBSERVER_TEST_SHOW set, prints what it wrote (to see real output).
/// The lines carrying `label` are exactly as many as the counter rose (`rose`), and at least `at_least.0`.
fn assert_labelled(finished: &Finished, label: &str, rose: u64, at_least: (usize, &str)) {
    let labelled = finished.stdout.iter().filter(|l| l.contains(label)).count();
    assert_eq!(
        labelled as u64,
        rose,
        "lines labelled {label:?} vs the counter's increase; linked lines:\n{}",
        linked(finished).join("\n")
    );
    assert!(labelled >= at_least.0, "{}, saw {labelled}", at_least.1);
}

fn agent_stop(mut agent: Agent) -> Finished {
    let f = agent.stop(libc::SIGTERM).expect("stopping the agent");
    if std::env::var_os("OBSERVER_TEST_SHOW").is_some() {
        eprintln!("{}\n{}", f.stdout.join("\n"), f.stderr.join("\n"));
    }
    f
}

#[test]
fn syn_queue_count_equals_the_syn_recv_rows() {
    if !require::root("syn_queue") || !require::tool("syn_queue", "nft") || !require::tool("syn_queue", "netstat") {
        return;
    }
    let pair = Pair::new("sq", 222).expect("veth pair");
    let port = 8081;
    let local = format!("{}:{port}", pair.b_addr);
    let target: SocketAddr = local.parse().expect("address");
    let _listener = listen(&pair.b, &pair.b_addr, port, 64);
    // The client's final ACKs never leave: every connection stays half-open on the server.
    pair.a.drop_final_acks(port).expect("nft rule");
    let agent = Agent::start(&pair.b, &["watch", "-i", &pair.b_if, "--port", &port.to_string()]).expect("agent");
    let clients: Vec<TcpStream> = connected(&pair.a, target, 6);
    let syn_recv = || {
        netstat(&pair.b)
            .iter()
            .filter(|r| r.0 == local && r.2 == "SYN_RECV")
            .count()
    };
    assert!(
        until(|| syn_recv() == 6),
        "netstat never showed 6 SYN_RECV rows: {:?}",
        netstat(&pair.b)
    );
    let row = queues_row(&pair.b, &local);
    assert_eq!(row["synq"].as_u64(), Some(syn_recv() as u64), "{row}");
    netlink_agrees_with_proc(&pair.b);
    netlink_agrees_with_proc(&pair.a);
    assert_eq!(row["accept"].as_u64(), Some(0), "{row}");
    compare_agrees(&pair.b);
    // The server retransmits its SYN-ACKs after 1 s: the kernel says so on its own lines.
    thread::sleep(Duration::from_millis(1500));
    let finished = agent_stop(agent);
    let synq: Vec<u64> = finished
        .stdout
        .iter()
        .filter(|l| l.contains("[SYN]"))
        .filter_map(|l| l.split(" synq ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        synq.len(),
        6,
        "every SYN linked to the listener: {:#?}",
        finished.stdout
    );
    assert!(synq.iter().all(|n| (1..=6).contains(n)), "{synq:?}");
    assert!(
        finished.stdout.iter().any(|l| l.contains("SYN-ACK retransmitted")),
        "no SYN-ACK retransmission line: {:#?}",
        finished.stdout
    );
    drop(clients);
}

#[test]
fn teardown_shows_each_transition_next_to_the_fin_that_caused_it() {
    if !require::root("teardown") || !require::tool("teardown", "netstat") {
        return;
    }
    let pair = Pair::new("td", 223).expect("veth pair");
    let port = 8082;
    let local = format!("{}:{port}", pair.b_addr);
    let target: SocketAddr = local.parse().expect("address");
    let listener = listen(&pair.b, &pair.b_addr, port, 16);
    let client_agent =
        Agent::start(&pair.a, &["watch", "-i", &pair.a_if, "--port", &port.to_string()]).expect("client agent");
    let server_agent =
        Agent::start(&pair.b, &["watch", "-i", &pair.b_if, "--port", &port.to_string()]).expect("server agent");
    let server = thread::spawn(move || {
        use std::io::Read as _;
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while conn.read(&mut buf).expect("server read") > 0 {}
        // The client closed first; this close sends the server's FIN from CLOSE_WAIT.
        thread::sleep(Duration::from_millis(200));
    });
    let client = connect(&pair.a, target, tests::wait())
        .join()
        .expect("client thread")
        .expect("connect");
    let client_addr = client.local_addr().expect("client address").to_string();
    {
        use std::io::Write as _;
        (&client).write_all(b"bye\n").expect("client write");
    }
    thread::sleep(Duration::from_millis(200));
    drop(client); // the active close
    server.join().expect("server thread");
    assert!(
        until(|| netstat(&pair.a)
            .iter()
            .any(|r| r.0 == client_addr && r.1 == local && r.2 == "TIME_WAIT")),
        "the active closer is not in TIME_WAIT: {:?}",
        netstat(&pair.a)
    );
    thread::sleep(Duration::from_millis(300));
    compare_agrees(&pair.a);
    compare_agrees(&pair.b);
    netlink_agrees_with_proc(&pair.a);
    let c = agent_stop(client_agent);
    let s = agent_stop(server_agent);
    let has = |f: &Finished, dir: &str, flag: &str, what: &str| {
        f.stdout.iter().any(|l| {
            l.contains(&format!(" {dir} "))
                && l.contains(flag)
                && l.split(" ⇒ ").nth(1).is_some_and(|k| k.contains(what))
        })
    };
    let show = |f: &Finished| format!("{}\n{}", f.stdout.join("\n"), f.stderr.join("\n"));
    // (agent, direction, flags, what the kernel side must say, which segment)
    let expected = [
        (&c, "out", "[SYN]", "SYN_SENT", "client SYN"),
        (&c, "in", "[SYN, ACK]", "SYN_SENT→ESTABLISHED", "client SYN-ACK"),
        (&s, "in", "[ACK]", "LISTEN→SYN_RECV→ESTABLISHED", "server final ACK"),
        (&c, "out", "FIN", "ESTABLISHED→FIN_WAIT1", "client FIN"),
        (&s, "in", "FIN", "ESTABLISHED→CLOSE_WAIT", "server at the client's FIN"),
        (&s, "out", "FIN", "CLOSE_WAIT→LAST_ACK", "server FIN"),
        (
            &c,
            "in",
            "FIN",
            "TIME_WAIT",
            "client enters TIME_WAIT at the server's FIN",
        ),
        (&s, "in", "[ACK]", "LAST_ACK→CLOSE", "server's last ACK"),
    ];
    for (f, dir, flag, what, which) in expected {
        assert!(has(f, dir, flag, what), "{which}: no line with {what}:\n{}", show(f));
    }
}

#[test]
fn connections_older_than_the_agent_print_scaled_windows() {
    if !require::root("older_connections") || !require::tool("older_connections", "ss") {
        return;
    }
    let pair = Pair::new("ws", 224).expect("veth pair");
    let port = 8083;
    let local = format!("{}:{port}", pair.b_addr);
    let listener = listen(&pair.b, &pair.b_addr, port, 16);
    let mut client = connect(&pair.a, local.parse().expect("address"), tests::wait())
        .join()
        .expect("client")
        .expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    // The kernel's negotiated shifts, as ss prints them from tcp_info at the server: wscale:<snd>,<rcv>.
    let ss = netns::run(pair.b.command("ss").args(["-tniH", "state", "established"])).expect("ss -tni");
    let wscale = ss
        .split_whitespace()
        .find_map(|t| t.strip_prefix("wscale:"))
        .expect("wscale in ss -ti");
    let (snd, rcv) = wscale.split_once(',').expect("two shifts");
    let (client_shift, server_shift): (u64, u64) = (snd.parse().expect("snd"), rcv.parse().expect("rcv"));

    // The handshake is over before the agent starts: only tcp_info can tell it the scale.
    let agent = Agent::start(
        &pair.b,
        &["watch", "-i", &pair.b_if, "--port", &port.to_string(), "--json"],
    )
    .expect("agent");
    {
        use std::io::{Read as _, Write as _};
        client.write_all(b"ping").expect("client write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).expect("server read");
        server.write_all(b"pong").expect("server write");
        client.read_exact(&mut buf).expect("client read");
    }
    thread::sleep(Duration::from_millis(300));
    let f = agent_stop(agent);
    let segments: Vec<serde_json::Value> = f
        .stdout
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|v| v["proto"] == "tcp")
        .collect();
    assert!(segments.len() >= 2, "{:#?}", f.stdout);
    for v in &segments {
        let from_client = v["src"] == pair.a_addr.as_str();
        let shift = if from_client { client_shift } else { server_shift };
        assert_eq!(v["win_scale"].as_u64(), Some(shift), "{v}");
        assert_eq!(v["win"].as_u64(), v["win_raw"].as_u64().map(|w| w << shift), "{v}");
        assert!(!v["summary"].as_str().unwrap_or_default().contains('*'), "{v}");
    }
}

#[test]
fn syn_queue_overflow_is_labelled_one_for_one_with_reqq_full_drops() {
    if !require::root("syn_queue_overflow") || !require::tool("syn_queue_overflow", "nft") {
        return;
    }
    let pair = Pair::new("sf", 225).expect("veth pair");
    let port = 8084;
    let local = format!("{}:{port}", pair.b_addr);
    let target: SocketAddr = local.parse().expect("address");
    // Without syncookies a full SYN queue drops SYNs (TCPReqQFullDrop) instead of answering with a cookie.
    netns::run(pair.b.command("sysctl").args(["-qw", "net.ipv4.tcp_syncookies=0"])).expect("sysctl");
    let _listener = listen(&pair.b, &pair.b_addr, port, 4);
    pair.a.drop_final_acks(port).expect("nft rule");
    let agent = Agent::start(&pair.b, &["watch", "-i", &pair.b_if, "--port", &port.to_string()]).expect("agent");
    let before = tcpext(&pair.b);
    // Five request socks fill a queue whose limit is the backlog (the kernel drops when the count exceeds 4).
    let half_open: Vec<TcpStream> = connected(&pair.a, target, 5);
    let late: Vec<_> = (0..5)
        .map(|_| connect(&pair.a, target, Duration::from_millis(3500)))
        .collect();
    for c in late {
        assert!(
            c.join().expect("client thread").is_err(),
            "a SYN got through a full SYN queue"
        );
    }
    let row = queues_row(&pair.b, &local);
    assert_eq!(row["synq"].as_u64(), Some(5), "{row}");
    thread::sleep(Duration::from_millis(500));
    let after = tcpext(&pair.b);
    let drops = after["TCPReqQFullDrop"] - before["TCPReqQFullDrop"];
    let finished = agent_stop(agent);
    assert_labelled(
        &finished,
        "DROPPED: SYN queue full (TCPReqQFullDrop",
        drops,
        (15, "5 clients x 3 SYNs should all be dropped"),
    );
    drop(half_open);
}
