//! `observer netstat` and `observer compare` against the real `netstat` and `ss`, on a socket table the test
//! builds in a pair of namespaces of its own.
//!
//! The server namespace holds listeners (one with a full accept queue, v6only and dual-stack wildcards, an
//! IPv4-mapped and a long IPv6 one), half-open request socks (the client namespace drops its final ACKs with
//! nftables), ESTABLISHED with unread and with unacknowledged bytes (the client drops the data), TIME_WAIT on
//! long IPv6 addresses, CLOSE_WAIT and FIN_WAIT2. Every tool runs inside that namespace; rows are compared as
//! sorted multisets of whole lines, byte for byte. Each test has its own pair (its own subnet) so they run in
//! parallel.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent,
    netns::{Netns, Pair},
    require,
};

/// How often a comparison is retaken when the table moved under it.
const ATTEMPTS: usize = 3;

/// The sockets of the scenario; dropping it closes them, then the namespaces go.
struct Scenario {
    pair: Pair,
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
}

/// A listening socket made with libc, for what std cannot set: `IPV6_V6ONLY` and a backlog of our choosing.
fn listen(ns: &Netns, addr: SocketAddr, backlog: i32, v6only: Option<bool>) -> TcpListener {
    ns.enter(move || -> std::io::Result<TcpListener> {
        let family = if addr.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let set = |level, name, value: libc::c_int| {
            // SAFETY: setsockopt(2) with an int option on our descriptor.
            let rc = unsafe {
                libc::setsockopt(
                    raw,
                    level,
                    name,
                    (&raw const value).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        if let Some(only) = v6only {
            set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, libc::c_int::from(only))?;
        }
        let (storage, len) = sockaddr(addr);
        // SAFETY: bind(2) and listen(2) with a sockaddr of the stated length.
        if unsafe { libc::bind(raw, (&raw const storage).cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::listen(raw, backlog) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TcpListener::from(fd))
    })
    .expect("entering the server namespace")
    .unwrap_or_else(|e| panic!("listening on {addr}: {e}"))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A client connection from `ns`.
fn connect(ns: &Netns, to: SocketAddr) -> TcpStream {
    ns.enter(move || TcpStream::connect_timeout(&to, tests::wait()))
        .expect("entering the client namespace")
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"))
}

fn accept(l: &TcpListener) -> TcpStream {
    l.accept().expect("accept").0
}

/// Runs `program args` in `ns`; returns the whole output.
fn run_in(ns: &Netns, program: &str, args: &[&str]) -> Output {
    ns.command(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {program} in {}: {e}", ns.name))
}

fn stdout_of(ns: &Netns, program: &str, args: &[&str]) -> String {
    let out = run_in(ns, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `observer <args>` in `ns`.
fn observer(ns: &Netns, args: &[&str]) -> Output {
    let bin = agent::binary().expect("the observer binary");
    run_in(ns, bin.to_str().expect("binary path"), args)
}

/// Builds the scenario in a new pair with IPv4 10.`subnet`.0.1/.2 and long IPv6 addresses.
fn scenario(tag: &str, subnet: u8) -> Scenario {
    let pair = Pair::new(tag, subnet).expect("namespaces");
    let b4 = pair.b_addr.clone();
    let a6 = format!("fd00:1234:5678:9abc:def0:1234:5678:{:x}", 0xa00 + u32::from(subnet));
    let b6 = format!("fd00:1234:5678:9abc:def0:1234:5678:{:x}", 0xb00 + u32::from(subnet));
    pair.add_ipv6(&a6, &b6).expect("IPv6 addresses");
    // The client drops its final ACKs to 8081 and 8085 (half-open request socks stay at the server) and every
    // segment from 8083 but the SYN-ACK, so the server's data stays unacknowledged. Matching on PSH instead let
    // the first segments of a split write through where the kernel segments before the input hook (6.1 cloud).
    for port in [8081, 8085] {
        pair.a.drop_final_acks(port).expect("nft rule");
    }
    for rule in [
        "add table inet obs",
        "add chain inet obs in { type filter hook input priority 0 ; }",
        "add rule inet obs in tcp sport 8083 tcp flags & syn == 0 drop",
    ] {
        let args: Vec<&str> = rule.split(' ').collect();
        stdout_of(&pair.a, "nft", &args);
    }
    let at = |ip: &str, port: u16| -> SocketAddr {
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
        .parse()
        .expect("address")
    };
    let b = &pair.b;
    let mut listeners = vec![
        listen(b, at("0.0.0.0", 22), 128, None),
        listen(b, at("::", 22), 128, Some(true)),
        listen(b, at(&b6, 8085), 16, None),
        listen(b, at("0.0.0.0", 8081), 16, None),
        listen(b, at(&format!("::ffff:{b4}"), 8082), 8, Some(false)),
    ];
    let full = listen(b, at(&b4, 8080), 1, None);
    let dual = listen(b, at("::", 2223), 5, Some(false));
    let unacked = listen(b, at(&b4, 8083), 8, None);
    let closing = listen(b, at(&b4, 8084), 8, None);
    let long = listen(b, at(&b6, 8443), 8, None);

    let a = &pair.a;
    let mut streams = vec![
        // Two connections fill the backlog-1 accept queue; nobody accepts them.
        connect(a, at(&b4, 8080)),
        connect(a, at(&b4, 8080)),
        // Half-open, IPv4 and IPv6; and one waiting in the mapped listener's queue.
        connect(a, at(&b4, 8081)),
        connect(a, at(&b6, 8085)),
        connect(a, at(&b4, 8082)),
    ];
    // Unread bytes at the server, over the dual-stack listener from IPv4 (mapped) and IPv6.
    let mut c = connect(a, at(&b4, 2223));
    c.write_all(&[b'x'; 1000]).expect("write");
    streams.extend([c, accept(&dual)]);
    let mut c = connect(a, at(&b6, 2223));
    c.write_all(&[b'x'; 77]).expect("write");
    streams.extend([c, accept(&dual)]);
    // Unacknowledged bytes at the server.
    streams.push(connect(a, at(&b4, 8083)));
    let mut s = accept(&unacked);
    s.write_all(&[b'z'; 3000]).expect("write");
    streams.push(s);
    // CLOSE_WAIT at the server (the client closed), and FIN_WAIT2 (the server half-closed).
    drop(connect(a, at(&b4, 8084)));
    streams.push(accept(&closing));
    streams.push(connect(a, at(&b4, 8084)));
    let s = accept(&closing);
    s.shutdown(Shutdown::Write).expect("shutdown");
    streams.push(s);
    // TIME_WAIT at the server on the long addresses: the server closes first, then the client.
    let mut c = connect(a, at(&b6, 8443));
    drop(accept(&long));
    c.set_read_timeout(Some(tests::wait())).expect("timeout");
    assert_eq!(c.read(&mut [0; 16]).expect("reading the server's FIN"), 0);
    drop(c);
    listeners.extend([full, dual, unacked, closing, long]);

    let scenario = Scenario {
        pair,
        _listeners: listeners,
        _streams: streams,
    };
    settle(&scenario.pair.b);
    scenario
}

/// Waits until the server namespace shows every state of the scenario with its queues in place.
fn settle(ns: &Netns) {
    let want = ["TIME-WAIT", "CLOSE-WAIT", "FIN-WAIT-2", "SYN-RECV"];
    let deadline = Instant::now() + tests::wait();
    loop {
        let ss = stdout_of(ns, "ss", &["-tan"]);
        let settled = want.iter().all(|s| ss.lines().any(|l| l.starts_with(s)))
            && ss.lines().filter(|l| l.starts_with("SYN-RECV")).count() == 2
            && ss
                .lines()
                .any(|l| l.starts_with("ESTAB") && l.split_whitespace().nth(2) == Some("3000"));
        if settled {
            return;
        }
        assert!(Instant::now() < deadline, "the scenario did not settle:\n{ss}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The first `header` lines, then the rest sorted.
fn lines(text: &str, header: usize) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = text.lines().map(str::to_string).collect();
    let (head, rows) = all.split_at(header.min(all.len()));
    let mut rows = rows.to_vec();
    rows.sort();
    (head.to_vec(), rows)
}

/// Runs ours then the tool, up to [`ATTEMPTS`] times until the two agree (after `normalize`); panics with both
/// listings otherwise.
fn agree(ns: &Netns, ours: &[&str], tool: (&str, &[&str]), header: usize, normalize: fn(&str) -> String) {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let out = observer(ns, ours);
        assert!(
            out.status.success(),
            "observer {ours:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = stdout_of(ns, tool.0, tool.1);
        let ours_text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (a, b) = (
            lines(&normalize(&ours_text), header),
            lines(&normalize(&theirs), header),
        );
        if a == b {
            assert!(a.1.len() >= 21, "too few rows: {ours_text}");
            return;
        }
        last = format!("observer {ours:?}:\n{ours_text}\n{} {:?}:\n{theirs}", tool.0, tool.1);
    }
    panic!("no agreement in {ATTEMPTS} attempts; last:\n{last}");
}

fn same(text: &str) -> String {
    text.to_string()
}

/// Drops the numbers of the Timer column: `on (0.20/3/0)` becomes `on`.
fn without_timer_values(text: &str) -> String {
    text.lines()
        .map(|l| match l.rfind(" (") {
            Some(i) if l.ends_with(')') => &l[..i],
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn tools(name: &str) -> bool {
    require::root(name) && ["netstat", "ss", "nft"].iter().all(|t| require::tool(name, t))
}

#[test]
fn netstat_rows_match_netstat_ant() {
    const NAME: &str = "netstat_rows_match_netstat_ant";
    if !tools(NAME) {
        return;
    }
    let s = scenario("tn", 211);
    agree(&s.pair.b, &["netstat"], ("netstat", &["-ant"]), 2, same);
    agree(&s.pair.b, &["netstat", "-W"], ("netstat", &["-antW"]), 2, same);
    agree(
        &s.pair.b,
        &["netstat", "--source", "proc"],
        ("netstat", &["-ant"]),
        2,
        same,
    );
}

#[test]
fn netstat_eo_matches_modulo_timer_values() {
    const NAME: &str = "netstat_eo_matches_modulo_timer_values";
    if !tools(NAME) {
        return;
    }
    let s = scenario("te", 212);
    agree(
        &s.pair.b,
        &["netstat", "-eo"],
        ("netstat", &["-anteo"]),
        2,
        without_timer_values,
    );
}

#[test]
fn netstat_p_names_the_same_owners() {
    const NAME: &str = "netstat_p_names_the_same_owners";
    if !tools(NAME) {
        return;
    }
    let s = scenario("tp", 213);
    agree(&s.pair.b, &["netstat", "-p"], ("netstat", &["-antp"]), 2, same);
    // The sockets are this test's own: netstat names this process.
    let listing = stdout_of(&s.pair.b, "netstat", &["-antp"]);
    let me = format!(" {}/", std::process::id());
    assert!(listing.lines().filter(|l| l.contains(&me)).count() >= 10, "{listing}");
}

#[test]
fn ss_form_matches_ss_tan() {
    const NAME: &str = "ss_form_matches_ss_tan";
    if !tools(NAME) {
        return;
    }
    let s = scenario("ts", 214);
    agree(&s.pair.b, &["netstat", "--ss"], ("ss", &["-tan"]), 1, same);
}

#[test]
fn compare_agrees_and_exits_zero() {
    const NAME: &str = "compare_agrees_and_exits_zero";
    if !tools(NAME) {
        return;
    }
    let s = scenario("tc", 215);
    let rows = stdout_of(&s.pair.b, "ss", &["-tan"]).lines().count() - 1;
    let out = observer(&s.pair.b, &["compare"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default();
    let want = format!("compare: {rows} rows, netstat: {rows} agree, 0 differ; ss: {rows} agree, 0 differ");
    assert_eq!(first, want, "{text}");
    assert!(text.contains("cuts addresses to 22 characters"), "{text}");

    // Without netstat on the PATH, compare says which package has it and exits 2.
    let bin = agent::binary().expect("the observer binary");
    let out = run_in(
        &s.pair.b,
        "env",
        &["PATH=/nonexistent", bin.to_str().expect("path"), "compare"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "observer: error: netstat not found: install it with `apt install net-tools`"
    );
}
