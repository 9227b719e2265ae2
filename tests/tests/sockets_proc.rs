//! The /proc sources against the tools users trust, live, in namespaces each test creates: the
//! /proc/net/tcp{,6} parser against `netstat -antoe`, process attribution against `netstat -antp`, TcpExt
//! against `nstat` and a listener that overflows, and the listen limits against `sysctl`.
//!
//! Every reading happens on a thread that entered the test's namespace, so these tests also show that the
//! sources follow the calling thread's namespace. Traffic stays on that namespace's loopback.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use observer::sys::sockets::{
    TcpState, canonical,
    process::ProcessMap,
    procfs::{self, ProcRow},
    tcpext::{self, Limits, TcpExt},
};
use tests::{
    netns::{Netns, run},
    require,
};

/// Polls `f` until it gives a value; panics after [`tests::wait()`] naming `what`.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + tests::wait();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The namespace's TCP table as observer reads it, from a thread inside it.
fn table(ns: &Netns) -> Vec<ProcRow> {
    ns.enter(procfs::read_table)
        .expect("entering")
        .expect("reading the table")
}

/// A listener on `addr` with accept queue limit `backlog`.
fn listen(addr: &str, backlog: i32) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    // SAFETY: listen(2) on a socket we own; on a listening socket it only sets the new backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen({backlog}): {}", std::io::Error::last_os_error());
    l
}

/// The text after the first `n` whitespace-separated columns of `line`, trimmed.
fn after_columns(line: &str, n: usize) -> &str {
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start();
        rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
    }
    rest.trim()
}

/// The data rows of `netstat <args>` run inside `ns`.
fn netstat(ns: &Netns, args: &str) -> Vec<String> {
    let out = run(ns.command("netstat").arg(args)).expect("netstat");
    out.lines()
        .filter(|l| l.starts_with("tcp"))
        .map(str::to_string)
        .collect()
}

/// An endpoint as `netstat -n` prints it: IPv4-mapped addresses as IPv4, port 0 as `*`.
fn netstat_endpoint(addr: SocketAddr) -> String {
    match addr.port() {
        0 => format!("{}:*", canonical(addr.ip())),
        port => format!("{}:{port}", canonical(addr.ip())),
    }
}

/// The first eight columns of `netstat -antoe` for a row: Proto to Inode.
fn netstat_columns(r: &ProcRow) -> Vec<String> {
    let s = &r.socket;
    vec![
        if s.is_v6() { "tcp6" } else { "tcp" }.to_string(),
        s.recv_q.to_string(),
        s.send_q.to_string(),
        netstat_endpoint(s.local),
        netstat_endpoint(s.remote),
        s.state.name().to_string(),
        s.uid.to_string(),
        s.inode.to_string(),
    ]
}

fn sorted(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    rows.sort();
    rows
}

/// Sockets kept open for the length of a test.
#[derive(Default)]
struct Held {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
}

#[test]
fn proc_table_agrees_with_netstat_in_a_namespace() {
    const NAME: &str = "proc_table_agrees_with_netstat_in_a_namespace";
    if !require::root(NAME) || !require::tool(NAME, "netstat") || !require::tool(NAME, "nft") {
        return;
    }
    let ns = Netns::new("proctab").expect("namespace");
    // The client's final ACK to 7081 is dropped: its listener keeps a half-open request sock.
    ns.drop_final_acks(7081).expect("nft");
    let held = ns
        .enter(|| {
            let mut h = Held::default();
            let connect = |addr: &str| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            // A backlog-1 listener that never accepts: two connections fill its accept queue.
            h.listeners.push(listen("127.0.0.1:7080", 1));
            h.streams.extend([connect("127.0.0.1:7080"), connect("127.0.0.1:7080")]);
            h.listeners.push(listen("0.0.0.0:7081", 16));
            h.streams.push(connect("127.0.0.1:7081"));
            // ESTABLISHED with 1000 unread bytes at the server.
            let l = listen("127.0.0.1:7082", 16);
            let mut c = connect("127.0.0.1:7082");
            c.write_all(&[b'x'; 1000]).expect("write");
            h.streams.extend([c, l.accept().expect("accept").0]);
            h.listeners.push(l);
            // The client closes first, then the server: the client's side stays in TIME_WAIT.
            let l = listen("127.0.0.1:7083", 16);
            let c = connect("127.0.0.1:7083");
            let (server, _) = l.accept().expect("accept");
            drop(c);
            thread::sleep(Duration::from_millis(100));
            drop(server);
            h.listeners.push(l);
            // IPv6 and an IPv4-mapped connection on a dual-stack listener.
            let l = listen("[::]:7090", 16);
            h.streams.extend([connect("[::1]:7090"), connect("127.0.0.1:7090")]);
            h.streams
                .extend([l.accept().expect("accept").0, l.accept().expect("accept").0]);
            h.listeners.push(l);
            h
        })
        .expect("entering");
    until("the TIME_WAIT row", || {
        table(&ns)
            .iter()
            .any(|r| r.socket.state == TcpState::TimeWait)
            .then_some(())
    });

    // netstat reads the files at another moment: compare a snapshot that held still around it.
    let (ours, theirs) = until("a table that holds still around netstat", || {
        let first = sorted(table(&ns).iter().map(netstat_columns).collect());
        let theirs = netstat(&ns, "-antoe");
        let second = sorted(table(&ns).iter().map(netstat_columns).collect());
        (first == second).then_some((first, theirs))
    });
    let theirs = sorted(
        theirs
            .iter()
            .map(|l| l.split_ascii_whitespace().take(8).map(str::to_string).collect())
            .collect(),
    );
    assert_eq!(ours, theirs, "observer's /proc rows against netstat -antoe");

    let rows = table(&ns);
    let has = |what: &str, f: &dyn Fn(&ProcRow) -> bool| assert!(rows.iter().any(f), "no {what} in {rows:#?}");
    has("full accept queue", &|r| {
        r.socket.state == TcpState::Listen && r.socket.local.port() == 7080 && r.socket.recv_q == 2
    });
    has("half-open request sock", &|r| {
        r.is_request() && r.socket.local.port() == 7081 && r.socket.inode == 0
    });
    has("unread bytes", &|r| {
        r.socket.state == TcpState::Established && r.socket.recv_q == 1000
    });
    has("IPv6 connection", &|r| {
        r.socket.is_v6() && r.socket.remote.ip().is_loopback()
    });
    has("IPv4-mapped connection", &|r| {
        r.socket.is_v6() && canonical(r.socket.remote.ip()).is_ipv4() && r.socket.remote.port() != 0
    });
    drop(held);
}

/// A child process killed and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn process_map_names_owners_like_netstat() {
    const NAME: &str = "process_map_names_owners_like_netstat";
    if !require::root(NAME) || !require::tool(NAME, "netstat") || !require::tool(NAME, "socat") {
        return;
    }
    let ns = Netns::new("procown").expect("namespace");
    // argv[0] as netstat sees it: plain, absolute, absolute with a long base name, relative with spaces.
    let cases = [
        (7101u16, "socat"),
        (7102, "/usr/bin/socat"),
        (7103, "/opt/observer test/a-very-long-program-name"),
        (7104, "relative dir/prog name"),
    ];
    let children: Vec<Running> = cases
        .iter()
        .map(|&(port, argv0)| {
            let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr");
            let child = ns
                .command("bash")
                .args(["-c", r#"exec -a "$1" socat -u "$2" STDOUT"#, "bash", argv0, &listen])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawning socat");
            Running(child)
        })
        .collect();
    let listeners = until("every socat listener", || {
        let rows = table(&ns);
        let found: Vec<ProcRow> = cases
            .iter()
            .filter_map(|&(port, _)| {
                rows.iter()
                    .find(|r| r.socket.state == TcpState::Listen && r.socket.local.port() == port)
                    .cloned()
            })
            .collect();
        (found.len() == cases.len()).then_some(found)
    });

    let netstat_rows = netstat(&ns, "-antp");
    let mut map = ProcessMap::new();
    for ((row, child), (_, argv0)) in listeners.iter().zip(&children).zip(&cases) {
        let local = netstat_endpoint(row.socket.local);
        let line = netstat_rows
            .iter()
            .find(|l| l.split_ascii_whitespace().nth(3) == Some(local.as_str()))
            .unwrap_or_else(|| panic!("netstat -antp has no row for {local}: {netstat_rows:#?}"));
        let owner = map
            .get(row.socket.inode)
            .unwrap_or_else(|| panic!("no owner for {local} ({argv0})"));
        assert_eq!(
            owner.netstat_label(),
            after_columns(line, 6),
            "PID/Program name of {argv0:?}"
        );
        assert_eq!(owner.pid, child.0.id(), "pid of {argv0:?}");
        assert_eq!(&*owner.comm, "socat", "comm of {argv0:?}");
    }
    assert!(map.get(0).is_none(), "inode 0 has no owner");
}

/// TcpExt of the namespace, read from a thread inside it.
fn tcpext_in(ns: &Netns) -> TcpExt {
    ns.enter(tcpext::read).expect("entering").expect("reading TcpExt")
}

#[test]
fn listen_overflows_rise_when_a_full_queue_gets_connects() {
    const NAME: &str = "listen_overflows_rise_when_a_full_queue_gets_connects";
    if !require::root(NAME) || !require::tool(NAME, "nstat") {
        return;
    }
    let ns = Netns::new("procovf").expect("namespace");
    let before = tcpext_in(&ns);
    assert_eq!(before.listen_overflows, 0, "a new namespace has no overflows yet");
    let addr: SocketAddr = "127.0.0.1:7200".parse().expect("address");
    let listener = ns.enter(|| listen("127.0.0.1:7200", 1)).expect("entering");
    // Two connections fill the never-accepting backlog-1 listener; the SYNs of three more overflow it.
    let queued: Vec<TcpStream> = ns
        .enter(move || (0..2).map(|_| TcpStream::connect(addr).expect("connect")).collect())
        .expect("entering");
    let overflowing: Vec<_> = (0..3)
        .map(|_| {
            ns.spawn(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
                .expect("entering")
        })
        .collect();
    for handle in overflowing {
        let result = handle.join().expect("connect thread");
        assert!(result.is_err(), "a connect to the full queue succeeded");
    }
    let row = table(&ns)
        .into_iter()
        .find(|r| r.socket.state == TcpState::Listen && r.socket.local == addr)
        .expect("the listener's row");
    assert_eq!(row.socket.recv_q, 2, "accept queue length");

    // The clients gave up, so the counters hold still: compare them with nstat in between two readings.
    let history = std::env::temp_dir().join(format!("observer-nstat-{}", std::process::id()));
    let (after, nstat) = until("TcpExt that holds still around nstat", || {
        let first = tcpext_in(&ns);
        let out = run(ns.command("nstat").env("NSTAT_HISTORY", &history).arg("-asz")).expect("nstat");
        (tcpext_in(&ns) == first).then_some((first, out))
    });
    let _ = std::fs::remove_file(&history);
    let nstat: std::collections::BTreeMap<String, u64> = nstat
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_ascii_whitespace();
            let name = cols.next()?.strip_prefix("TcpExt")?;
            Some((name.to_string(), cols.next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(after.all, nstat, "every TcpExt counter against nstat -asz");

    let rose = after.since(&before);
    assert!(
        rose.listen_overflows >= 3,
        "ListenOverflows rose by {}",
        rose.listen_overflows
    );
    assert!(
        rose.listen_drops >= rose.listen_overflows,
        "ListenDrops {} counts every overflow {}",
        rose.listen_drops,
        rose.listen_overflows
    );
    drop((listener, queued));
}

/// `sysctl -n <name>` run by `cmd` (a namespace's command or the host's).
fn sysctl(mut cmd: Command, name: &str) -> String {
    run(cmd.args(["-n", name])).expect("sysctl").trim().to_string()
}

#[test]
fn limits_are_read_per_namespace() {
    const NAME: &str = "limits_are_read_per_namespace";
    if !require::root(NAME) || !require::tool(NAME, "sysctl") {
        return;
    }
    let host = tcpext::read_limits().expect("host limits");
    let ns = Netns::new("proclim").expect("namespace");
    let somaxconn = if host.somaxconn == 77 { 78 } else { 77 };
    let settings = [
        ("net.core.somaxconn", somaxconn.to_string()),
        ("net.ipv4.tcp_max_syn_backlog", "99".to_string()),
        ("net.ipv4.tcp_syncookies", "2".to_string()),
        ("net.ipv4.tcp_abort_on_overflow", "1".to_string()),
    ];
    for (name, value) in &settings {
        run(ns.command("sysctl").args(["-w", &format!("{name}={value}")])).expect("sysctl -w");
    }
    let inside = ns
        .enter(tcpext::read_limits)
        .expect("entering")
        .expect("namespace limits");

    let in_namespace = || ns.command("sysctl");
    let on_host = || Command::new("sysctl");
    let readers: [(Limits, &dyn Fn() -> Command); 2] = [(inside, &in_namespace), (host, &on_host)];
    for (limits, sysctl_cmd) in readers {
        let ours = [
            ("net.core.somaxconn", limits.somaxconn.to_string()),
            ("net.ipv4.tcp_max_syn_backlog", limits.tcp_max_syn_backlog.to_string()),
            ("net.ipv4.tcp_syncookies", limits.tcp_syncookies.to_string()),
            (
                "net.ipv4.tcp_abort_on_overflow",
                u8::from(limits.tcp_abort_on_overflow).to_string(),
            ),
        ];
        for (name, value) in ours {
            assert_eq!(value, sysctl(sysctl_cmd(), name), "{name}");
        }
    }
    assert_eq!(inside.somaxconn, somaxconn);
    assert_ne!(inside.somaxconn, host.somaxconn, "the namespace's own value");
    assert!(inside.tcp_abort_on_overflow);
}
