//! Kernel socket events (tp_btf on the TCP tracepoints) against real connections in namespaces the tests make.
//!
//! One agent runs per namespace of a veth pair, each reporting only its own namespace; a second pair carries
//! the same traffic at the same time and must show up in neither. The kernel's known transitions are the
//! expected sequences, `ss -tane` (sock_diag) is the oracle for cookies and listener queues, and bpftool's
//! dump of the kernel's BTF the oracle for the structure offsets.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use observer::{
    model::events::{self, Event},
    sys::capture::{Capture, Counters, RingSizes},
    sys::sockets::TcpState::{self, *},
    sys::sockprogs::{self, PROGRAMS, SockEvent, SockEventKind, SockEvents},
};
use observer_common::{Config, Counter};
use tests::{
    netns::{Netns, Pair, run},
    require,
};

/// The server's port.
const PORT: u16 = 4711;
/// A port nobody listens on.
const CLOSED: u16 = 4712;

/// An agent reporting the sockets of one namespace.
struct Agent {
    capture: Capture,
    ring: RingBuf<MapData>,
    setup: SockEvents,
    seen: Vec<SockEvent>,
}

impl Agent {
    /// Loads the programs and attaches the socket ones for the namespace `ns` (its inode read from inside it).
    fn start(ns: &Netns) -> Agent {
        let netns = ns
            .enter(sockprogs::current_netns)
            .expect("entering the namespace")
            .expect("reading the namespace inode");
        let mut capture =
            Capture::load(&Config::default(), RingSizes::sockets_only(), false).expect("loading the object");
        let setup = sockprogs::attach_socket_events(&mut capture, netns).expect("attaching the socket programs");
        let ring = capture.take_sock_events().expect("the socket ring buffer");
        Agent {
            capture,
            ring,
            setup,
            seen: Vec::new(),
        }
    }

    /// Reads what the ring holds.
    fn drain(&mut self) {
        drain(&mut self.ring, &mut self.seen);
    }

    /// Reads until `done` holds for what was seen (or the bound passes; the caller's assertions then fail).
    fn until(&mut self, done: impl Fn(&[SockEvent]) -> bool) -> &[SockEvent] {
        let start = Instant::now();
        loop {
            self.drain();
            if done(&self.seen) || start.elapsed() > tests::wait() {
                return &self.seen;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Detaches the programs and returns the final counters with every event, the last ones read after.
    fn finish(self) -> (Counters, Vec<SockEvent>) {
        let Agent {
            capture,
            mut ring,
            mut seen,
            ..
        } = self;
        let counters = capture.detach().expect("detaching");
        drain(&mut ring, &mut seen);
        (counters, seen)
    }

    /// The state changes of the socket `cookie`, in order.
    fn transitions(&self, cookie: u64) -> Vec<(TcpState, TcpState)> {
        transitions(&self.seen, cookie)
    }
}

/// Appends the socket events waiting in `ring` to `seen`.
fn drain(ring: &mut RingBuf<MapData>, seen: &mut Vec<SockEvent>) {
    while let Some(item) = ring.next() {
        match events::decode(&item).expect("a decodable record") {
            Event::Sock(r) => seen.push(SockEvent::from_record(&r).expect("a known event kind")),
            other => panic!("a packet record without packet programs: {other:?}"),
        }
    }
}

fn transitions(events: &[SockEvent], cookie: u64) -> Vec<(TcpState, TcpState)> {
    events
        .iter()
        .filter(|e| e.cookie == cookie && e.kind == SockEventKind::State)
        .map(|e| (e.old_state.expect("old state"), e.state.expect("new state")))
        .collect()
}

/// One row of `ss -tane` in a namespace: state, Recv-Q, Send-Q, local, peer, cookie.
#[derive(Debug, Clone)]
struct SsRow {
    state: String,
    recv_q: u32,
    send_q: u32,
    local: SocketAddr,
    peer: String,
    cookie: u64,
}

fn ss(ns: &Netns) -> Vec<SsRow> {
    let out = run(ns.command("ss").args(["-tane"])).expect("ss -tane");
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let cookie = f.iter().find_map(|t| t.strip_prefix("sk:"))?;
            Some(SsRow {
                state: f.first()?.to_string(),
                recv_q: f.get(1)?.parse().ok()?,
                send_q: f.get(2)?.parse().ok()?,
                // ss prints an IPv6 wildcard that also takes IPv4 (v6only:0) as `*`.
                local: f.get(3)?.replace("*:", "[::]:").parse().ok()?,
                peer: f.get(4)?.to_string(),
                cookie: u64::from_str_radix(cookie, 16).ok()?,
            })
        })
        .collect()
}

/// The row of `ss` whose local and peer endpoints are these.
fn ss_row(rows: &[SsRow], local: SocketAddr, peer: &str) -> SsRow {
    rows.iter()
        .find(|r| r.local == local && r.peer == peer)
        .unwrap_or_else(|| panic!("no ss row {local} {peer} in {rows:?}"))
        .clone()
}

/// A connection from `pair.a` to a server on `pair.b`: established, then closed by the client first.
struct Conn {
    listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

fn connect(pair: &Pair) -> Conn {
    let bind = format!("{}:{PORT}", pair.b_addr);
    // The previous round's server socket may still wait in LAST_ACK for its final ACK, which SO_REUSEADDR does
    // not cover: retry the bind until it is gone.
    let listener = pair
        .b
        .enter(move || {
            let mut tries = 0;
            loop {
                match TcpListener::bind(&bind) {
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                        tries += 1;
                        thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => return other,
                }
            }
        })
        .unwrap()
        .expect("bind");
    let to = format!("{}:{PORT}", pair.b_addr);
    let mut client = pair.a.enter(move || TcpStream::connect(to)).unwrap().expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("client write");
    Conn {
        listener,
        client,
        server,
    }
}

/// The client closes first (active close), the server closes once it has read the client's FIN.
fn teardown(conn: Conn) -> TcpListener {
    let Conn {
        listener,
        client,
        mut server,
    } = conn;
    drop(client);
    server.set_read_timeout(Some(tests::wait())).expect("read timeout");
    let mut buf = Vec::new();
    server.read_to_end(&mut buf).expect("server reads to the FIN");
    assert_eq!(buf, b"x");
    drop(server);
    listener
}

/// A connection attempt from `pair.a` to a port of `pair.b` without a listener (answered with a RST).
fn refused(pair: &Pair) {
    let to = format!("{}:{CLOSED}", pair.b_addr);
    let result = pair.a.enter(move || TcpStream::connect(to)).unwrap();
    assert!(result.is_err(), "nothing listens on {CLOSED}");
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

#[test]
fn every_socket_program_loads_and_attaches() {
    if !require::root("every_socket_program_loads_and_attaches") {
        return;
    }
    let ns = Netns::new("sokl").expect("namespace");
    let agent = Agent::start(&ns);
    // Every tracepoint of PLATFORM.md is in every supported kernel: nothing may be skipped. A kernel whose
    // tracepoint has fewer arguments gets the older program; 6.18 has every argument (6.12 lacks
    // tcp_retransmit_skb's `err`, 6.1 also `tcp_send_reset`'s reason and `kfree_skb`'s `rx_sk`).
    assert_eq!(agent.setup.skipped, Vec::new());
    assert_eq!(agent.setup.attached.len(), PROGRAMS.len());
    let newest = require::kernel_version().is_some_and(|v| v >= (6, 18));
    for (p, attached) in PROGRAMS.iter().zip(&agent.setup.attached) {
        let older = p.older.map(|(name, _)| name);
        assert!(
            *attached == p.program || (!newest && Some(*attached) == older),
            "{}: attached {attached}",
            p.program
        );
        assert!(agent.capture.attached().contains(attached), "{attached}");
    }
}

#[test]
fn offsets_agree_with_bpftool() {
    if !require::root("offsets_agree_with_bpftool") || !require::tool("offsets_agree_with_bpftool", "bpftool") {
        return;
    }
    let raw = run(std::process::Command::new("bpftool").args([
        "btf",
        "dump",
        "file",
        "/sys/kernel/btf/vmlinux",
        "format",
        "raw",
    ]))
    .expect("bpftool btf dump");
    // Direct members, as bpftool prints them under "[id] STRUCT 'name'": bits_offset / 8.
    let direct = |outer: &str, member: &str| -> u32 {
        let head = format!("STRUCT '{outer}' ");
        let body = raw
            .split("\n[")
            .find(|block| block.split_once("] ").is_some_and(|(_, rest)| rest.starts_with(&head)))
            .unwrap_or_else(|| panic!("bpftool has no struct {outer}"));
        let line = body
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
            .unwrap_or_else(|| panic!("bpftool: {outer} has no direct member {member}"));
        let bits: u32 = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("bits_offset="))
            .and_then(|v| v.parse().ok())
            .expect("bits_offset");
        bits / 8
    };
    let btf = sockprogs::kernel_btf().expect("kernel BTF");
    let o = sockprogs::sock_offsets(&btf).expect("offsets");
    assert_eq!(u32::from(o.skc_v6_daddr), direct("sock_common", "skc_v6_daddr"));
    assert_eq!(u32::from(o.skc_v6_rcv_saddr), direct("sock_common", "skc_v6_rcv_saddr"));
    assert_eq!(
        u32::from(o.skc_net),
        direct("sock_common", "skc_net"),
        "skc_net.net is at 0"
    );
    assert_eq!(u32::from(o.sk_ack_backlog), direct("sock", "sk_ack_backlog"));
    assert_eq!(u32::from(o.sk_max_ack_backlog), direct("sock", "sk_max_ack_backlog"));
    assert_eq!(u32::from(o.sk_protocol), direct("sock", "sk_protocol"));
    assert_eq!(
        u32::from(o.icsk_accept_queue_qlen),
        direct("inet_connection_sock", "icsk_accept_queue") + direct("request_sock_queue", "qlen")
    );
    assert_eq!(u32::from(o.dev_nd_net), direct("net_device", "nd_net"));
    assert_eq!(u32::from(o.inet_sport), direct("inet_sock", "inet_sport"));
}

#[test]
fn connection_lifecycle_cookies_and_resets_per_namespace() {
    if !require::root("connection_lifecycle_cookies_and_resets_per_namespace") {
        return;
    }
    let pair = Pair::new("soev", 231).expect("veth pair");
    let other = Pair::new("soeo", 232).expect("second veth pair");
    let mut client_agent = Agent::start(&pair.a);
    let mut server_agent = Agent::start(&pair.b);

    // The same traffic in the other pair, at the same time, on the same ports.
    let (client_at, server_at, client_cookie, child_cookie, listen_row) = thread::scope(|scope| {
        let noise = scope.spawn(|| {
            for _ in 0..3 {
                drop(teardown(connect(&other)));
                refused(&other);
            }
        });
        let conn = connect(&pair);
        let client_at = conn.client.local_addr().expect("client address");
        let server_at = addr(&pair.b_addr, PORT);
        let ss_a = ss(&pair.a);
        let ss_b = ss(&pair.b);
        let client_cookie = ss_row(&ss_a, client_at, &server_at.to_string()).cookie;
        let child_cookie = ss_row(&ss_b, server_at, &client_at.to_string()).cookie;
        let listen_row = ss_row(&ss_b, server_at, "0.0.0.0:*");
        assert_eq!(listen_row.state, "LISTEN");
        drop(teardown(conn));
        refused(&pair);
        noise.join().expect("the other pair's traffic");
        (client_at, server_at, client_cookie, child_cookie, listen_row)
    });

    let client_done = |e: &[SockEvent]| {
        transitions(e, client_cookie).len() >= 5 && e.iter().any(|e| e.kind == SockEventKind::ReceiveReset)
    };
    let seen = client_agent.until(client_done).to_vec();
    // Client: connect, then the active close; the FIN_WAIT2 socket becomes a TIME_WAIT sock, whose state is
    // not a socket state change. At CLOSE->SYN_SENT the kernel has not yet picked the local port.
    assert_eq!(
        client_agent.transitions(client_cookie),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close),
        ]
    );
    for e in seen
        .iter()
        .filter(|e| e.cookie == client_cookie && e.kind == SockEventKind::State)
    {
        assert_eq!(e.remote, Some(server_at), "{e:?}");
        let port = if e.old_state == Some(Close) {
            0
        } else {
            client_at.port()
        };
        assert_eq!(e.local, Some(addr(&pair.a_addr, port)), "{e:?}");
        assert!(e.queues.is_none(), "not a listener: {e:?}");
    }

    // 6.1's tcp_send_reset (the 2-argument one) fires only for a RST sent on behalf of a socket.
    let no_socketless_resets = server_agent.setup.attached.contains(&"sock_send_reset_2args");
    let server_done = |e: &[SockEvent]| {
        transitions(e, child_cookie).contains(&(LastAck, Close))
            && transitions(e, listen_row.cookie).contains(&(Listen, Close))
            && (no_socketless_resets || e.iter().any(|e| e.kind == SockEventKind::SendReset))
            && e.iter()
                .any(|e| e.kind == SockEventKind::Drop && e.local.is_some_and(|l| l.port() == CLOSED))
    };
    let seen = server_agent.until(server_done).to_vec();
    // On 6.1 and 6.12 (not on 6.18) the kernel sets the child's LISTEN→SYN_RECV before it gives the child the
    // request sock's cookie and addresses: that change comes with the listener's (the linker gives it back to
    // the child, see `Linker::push`). One of the two shapes, whole, and the new one from 6.18 on.
    let clone_as_listener = server_agent.transitions(listen_row.cookie).contains(&(Listen, SynRecv));
    assert!(
        !(clone_as_listener && require::kernel_version().is_some_and(|v| v >= (6, 18))),
        "6.18 reports the clone with the child's own cookie"
    );
    let child_path = [
        (Listen, SynRecv),
        (SynRecv, Established),
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ];
    let child_path = &child_path[usize::from(clone_as_listener)..];
    let listener_path: &[_] = if clone_as_listener {
        &[(Close, Listen), (Listen, SynRecv), (Listen, Close)]
    } else {
        &[(Close, Listen), (Listen, Close)]
    };
    // Server child: cloned from the listener at the final ACK, then the passive close.
    assert_eq!(server_agent.transitions(child_cookie), child_path);
    for e in seen
        .iter()
        .filter(|e| e.cookie == child_cookie && e.kind == SockEventKind::State)
    {
        assert_eq!((e.local, e.remote), (Some(server_at), Some(client_at)), "{e:?}");
        assert!(e.queues.is_none(), "the child is not the listener: {e:?}");
    }
    // The listener: listen() and close, both with its queues: the limit is ss's Send-Q, and nothing waits.
    assert_eq!(server_agent.transitions(listen_row.cookie), listener_path);
    for e in seen.iter().filter(|e| {
        e.cookie == listen_row.cookie
            && e.kind == SockEventKind::State
            && (e.old_state, e.state) != (Some(Listen), Some(SynRecv))
    }) {
        assert_eq!(
            (e.local, e.remote),
            (Some(server_at), Some(addr("0.0.0.0", 0))),
            "{e:?}"
        );
        let queues = e.queues.expect("queues on a listener event");
        assert_eq!(
            queues.accept_limit, listen_row.send_q,
            "sk_max_ack_backlog is ss's Send-Q"
        );
        assert_eq!((queues.accept_queue, queues.syn_queue), (0, 0));
    }

    // The refused connection: the client's SYN_SENT socket is reset, the server side had no socket.
    let refused_client = seen_refused(&client_agent.seen, &pair);
    let reset = server_agent.seen.iter().find(|e| e.kind == SockEventKind::SendReset);
    if no_socketless_resets {
        assert_eq!(reset, None, "6.1 reports no RST sent without a socket");
    } else {
        let reset = reset.expect("a RST sent");
        assert!(reset.from_packet, "no socket on the closed port: {reset:?}");
        assert_eq!(reset.cookie, 0);
        assert_eq!(reset.local, Some(addr(&pair.b_addr, CLOSED)));
        assert_eq!(reset.remote, Some(refused_client));
        let reason = server_agent.setup.reasons.name(
            observer_common::sock::SOCK_EV_SEND_RESET,
            reset.reason.expect("a reset reason"),
        );
        assert_eq!(reason, "NO_SOCKET");
        // ... and the SYN that found no socket was dropped for that reason.
        let drop = server_agent
            .seen
            .iter()
            .find(|e| e.kind == SockEventKind::Drop && e.local == reset.local && e.remote == reset.remote)
            .expect("the refused SYN dropped");
        let reason = server_agent
            .setup
            .reasons
            .name(observer_common::sock::SOCK_EV_DROP, drop.reason.expect("a drop reason"));
        assert_eq!(reason, "NO_SOCKET");
    }

    // Nothing from the other pair, and nothing of one namespace in the other's agent.
    for (agent, own) in [(&client_agent, &pair.a_addr), (&server_agent, &pair.b_addr)] {
        let own: IpAddr = own.parse().unwrap();
        for e in &agent.seen {
            let (Some(local), Some(remote)) = (e.local, e.remote) else {
                continue;
            };
            // A packet's tuple is read as received; a dropped outgoing packet has it the other way round.
            let ours = local.ip() == own || local.ip().is_unspecified() || (e.from_packet && remote.ip() == own);
            assert!(ours, "an event of another namespace: {e:?}");
        }
    }
    let client_cookies: Vec<u64> = client_agent.seen.iter().map(|e| e.cookie).collect();
    assert!(
        !client_cookies.contains(&child_cookie),
        "the server's socket in the client's agent"
    );

    // Detached, the counters are final: every emitted event was read, none lost, the other pair's counted.
    let (counters, seen) = client_agent.finish();
    let sock: BTreeMap<&str, u64> = Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("sock_"))
        .map(|c| (c.name(), counters.get(*c)))
        .collect();
    assert_eq!(sock["sock_events_emitted"], seen.len() as u64, "{sock:?}");
    assert_eq!(sock["sock_events_dropped_ring_full"], 0, "{sock:?}");
    assert!(
        sock["sock_other_netns"] > 0,
        "the other namespaces' events were left out: {sock:?}"
    );
    let seen_calls: u64 = Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("sock_seen_"))
        .map(|c| counters.get(*c))
        .sum();
    let outcomes: u64 = [
        Counter::SockEmitted,
        Counter::SockRingFull,
        Counter::SockOtherNetns,
        Counter::SockNotTcp,
        Counter::SockUnreadable,
    ]
    .iter()
    .map(|c| counters.get(*c))
    .sum();
    assert_eq!(
        seen_calls, outcomes,
        "every tracepoint call ends in one outcome: {sock:?}"
    );
}

/// The local endpoint of the client socket the RST reset, checking its events on the way.
fn seen_refused(events: &[SockEvent], pair: &Pair) -> SocketAddr {
    let to = addr(&pair.b_addr, CLOSED);
    let reset = events
        .iter()
        .find(|e| e.kind == SockEventKind::ReceiveReset)
        .expect("the client received a RST");
    assert_eq!(reset.remote, Some(to));
    assert_eq!(reset.state, Some(SynSent));
    assert_eq!(
        transitions(events, reset.cookie),
        [(Close, SynSent), (SynSent, Close)],
        "a refused connect"
    );
    reset.local.expect("the reset socket's local endpoint")
}

/// Rows of `ss -tane` in `state` whose local endpoint is `local`.
fn rows_at<'a>(rows: &'a [SsRow], state: &'a str, local: SocketAddr) -> impl Iterator<Item = &'a SsRow> {
    rows.iter().filter(move |r| r.state == state && r.local == local)
}

#[test]
fn listener_queues_and_synack_retransmits_agree_with_ss() {
    let test = "listener_queues_and_synack_retransmits_agree_with_ss";
    if !require::root(test) || !require::tool(test, "nft") {
        return;
    }
    let pair = Pair::new("solq", 233).expect("veth pair");
    // The server never sees the handshake's final ACK on HALF_OPEN: its request sock stays in the SYN queue
    // and its SYN-ACK is retransmitted.
    const ACCEPT: u16 = 5000;
    const HALF_OPEN: u16 = 5002;
    let nft = |args: &[&str]| run(pair.b.command("nft").args(args)).expect("nft");
    nft(&["add", "table", "inet", "obs"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "obs",
        "in",
        "{ type filter hook input priority 0; }",
    ]);
    let port = HALF_OPEN.to_string();
    nft(&[
        "add",
        "rule",
        "inet",
        "obs",
        "in",
        "tcp",
        "dport",
        &port,
        "tcp flags & (fin|syn|rst|ack) == ack",
        "drop",
    ]);
    let mut agent = Agent::start(&pair.b);

    let listen = |port: u16| {
        let at = if port == ACCEPT + 1 {
            format!("[::]:{port}")
        } else {
            format!("{}:{port}", pair.b_addr)
        };
        pair.b.enter(move || TcpListener::bind(at)).unwrap().expect("bind")
    };
    let listeners = [listen(ACCEPT), listen(ACCEPT + 1), listen(HALF_OPEN)];
    let dial = |port: u16| {
        let to = format!("{}:{port}", pair.b_addr);
        pair.a.enter(move || TcpStream::connect(to)).unwrap().expect("connect")
    };
    // Two connections wait in ACCEPT's accept queue, one handshake stays half-open at HALF_OPEN.
    let _clients = [dial(ACCEPT), dial(ACCEPT), dial(HALF_OPEN)];

    let synack = agent
        .until(|e| e.iter().any(|e| e.kind == SockEventKind::RetransmitSynack))
        .iter()
        .find(|e| e.kind == SockEventKind::RetransmitSynack)
        .cloned()
        .expect("a SYN-ACK retransmitted");
    let queues = pair
        .b
        .enter(|| {
            let mut capture = Capture::load(&Config::default(), RingSizes::sockets_only(), false)?;
            sockprogs::listener_queues(&mut capture)
        })
        .expect("entering the namespace")
        .expect("listener_queues");
    let rows = ss(&pair.b);

    let listen_rows: Vec<&SsRow> = rows.iter().filter(|r| r.state == "LISTEN").collect();
    assert_eq!(queues.len(), listen_rows.len(), "{queues:?} vs {listen_rows:?}");
    for row in listen_rows {
        let q = queues
            .iter()
            .find(|q| q.local == row.local)
            .unwrap_or_else(|| panic!("no listener {} in {queues:?}", row.local));
        assert_eq!(q.cookie, row.cookie, "{q:?}");
        assert_eq!(q.queues.accept_queue, row.recv_q, "accept queue is ss's Recv-Q: {q:?}");
        assert_eq!(q.queues.accept_limit, row.send_q, "limit is ss's Send-Q: {q:?}");
        let half_open = rows_at(&rows, "SYN-RECV", row.local).count() as u32;
        assert_eq!(q.queues.syn_queue, half_open, "SYN queue is the SYN-RECV rows: {q:?}");
    }
    let accept = queues.iter().find(|q| q.local.port() == ACCEPT).expect("ACCEPT");
    let half = queues.iter().find(|q| q.local.port() == HALF_OPEN).expect("HALF_OPEN");
    assert_eq!(
        (accept.queues.accept_queue, half.queues.syn_queue),
        (2, 1),
        "the test's own traffic"
    );

    // The retransmit names the request sock (tuple, cookie) and carries the listener's queues.
    let req = rows_at(&rows, "SYN-RECV", addr(&pair.b_addr, HALF_OPEN))
        .next()
        .expect("the request sock in ss");
    assert_eq!(synack.local, Some(addr(&pair.b_addr, HALF_OPEN)));
    assert_eq!(synack.remote.map(|r| r.to_string()), Some(req.peer.clone()));
    assert_eq!(synack.cookie, req.cookie, "the request sock's cookie");
    assert_eq!(synack.state, Some(NewSynRecv));
    let q = synack.queues.expect("the listener's queues");
    assert_eq!(
        (q.syn_queue, q.accept_queue, q.accept_limit),
        (1, 0, half.queues.accept_limit)
    );
    drop(listeners);
}
