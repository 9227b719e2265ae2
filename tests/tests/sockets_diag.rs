//! The sock_diag client against `ss` in a namespace of its own: a listener with queued connections, established
//! pairs with unread data, a TIME_WAIT socket, an IPv6 listener with a native and a v4-mapped connection, and a
//! half-open request sock (nftables drops the client's final ACK). Every row `ss -tanoei` prints must be in the
//! dump with the same fields, `lookup` must find each one, and the port filter must return exactly that port.

#[path = "../../observer/src/sys/sockets/testdata/diag_ss.rs"]
mod diag_ss;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use observer::sys::sockets::{
    Socket, TcpState, TimerKind,
    diag::{Diag, Families, Query},
};
use tests::{
    netns::{Netns, run},
    require,
};

const PORT_V4: u16 = 5000;
const PORT_V6: u16 = 5001;
const PORT_HALF: u16 = 6000;

/// How long the kernel may take to move a closed connection to TIME_WAIT (it is immediate on loopback).
const SETTLE: Duration = Duration::from_secs(10);

/// Runs ss in the calling thread's namespace (a child process starts in its parent thread's namespaces).
fn ss(args: &[&str]) -> anyhow::Result<Vec<diag_ss::SsRow>> {
    Ok(diag_ss::parse(&run(Command::new("ss").args(args))?))
}

/// `listen(2)` again with another backlog (Linux takes it on a listening socket).
fn set_backlog(l: &TcpListener, backlog: i32) -> anyhow::Result<()> {
    // SAFETY: listen on a descriptor the listener owns.
    if unsafe { libc::listen(l.as_raw_fd(), backlog) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn keepalive(s: &TcpStream) -> anyhow::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "setsockopt(SO_KEEPALIVE): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Connects to 127.0.0.1:`port` from a socket whose receive buffer is set small before the handshake, so its
/// window scale differs from its peer's (`wscale:10,0` rather than `wscale:10,10`).
fn connect_small_rcvbuf(port: u16) -> anyhow::Result<TcpStream> {
    // SAFETY: a fresh socket, owned by the TcpStream at once.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    let size: libc::c_int = 4096;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: setsockopt and connect with values valid for their lengths.
    unsafe {
        let rc = libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        ensure!(rc == 0, "setsockopt(SO_RCVBUF): {}", std::io::Error::last_os_error());
        let rc = libc::connect(
            stream.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        ensure!(rc == 0, "connect: {}", std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// The sockets of the scenario, kept open while the checks run.
struct Scenario {
    _streams: Vec<TcpStream>,
    _listeners: Vec<TcpListener>,
    /// The client whose final ACK is dropped: its local address is the request sock's remote.
    half_client: SocketAddr,
}

fn open_scenario(diag: &mut Diag) -> anyhow::Result<Scenario> {
    let (mut keep, mut listeners) = (Vec::new(), Vec::new());
    let lst = TcpListener::bind(("127.0.0.1", PORT_V4))?;
    set_backlog(&lst, 7)?;
    let mut client = TcpStream::connect(("127.0.0.1", PORT_V4))?;
    let (server, _) = lst.accept()?;
    client.write_all(&[b'x'; 100])?;
    keepalive(&client)?;
    keep.push(client);
    keep.push(server);

    keep.push(connect_small_rcvbuf(PORT_V4)?);
    keep.push(lst.accept()?.0);

    // TIME_WAIT on the client side: it closes first, the server after reading the end of stream.
    let tw_client = TcpStream::connect(("127.0.0.1", PORT_V4))?;
    let tw_local = tw_client.local_addr()?;
    let (mut tw_server, _) = lst.accept()?;
    drop(tw_client);
    tw_server.read_to_end(&mut Vec::new())?;
    drop(tw_server);
    let deadline = Instant::now() + SETTLE;
    while diag
        .lookup(tw_local, SocketAddr::from(([127, 0, 0, 1], PORT_V4)), false)?
        .map(|s| s.state)
        != Some(TcpState::TimeWait)
    {
        ensure!(Instant::now() < deadline, "{tw_local} never reached TIME_WAIT");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Two connections left in the accept queue, one with unread data.
    for data in [&b""[..], b"queued"] {
        let mut c = TcpStream::connect(("127.0.0.1", PORT_V4))?;
        c.write_all(data)?;
        keep.push(c);
    }
    listeners.push(lst);

    let lst6 = TcpListener::bind(("::", PORT_V6))?;
    set_backlog(&lst6, 3)?;
    keep.push(TcpStream::connect(("::1", PORT_V6))?);
    keep.push(TcpStream::connect(("127.0.0.1", PORT_V6))?);
    keep.push(lst6.accept()?.0);
    keep.push(lst6.accept()?.0);
    listeners.push(lst6);

    // The client completes its handshake; the listener never sees the final ACK.
    let half_lst = TcpListener::bind(("127.0.0.1", PORT_HALF))?;
    set_backlog(&half_lst, 4)?;
    let half = TcpStream::connect(("127.0.0.1", PORT_HALF))?;
    let half_client = half.local_addr()?;
    keep.push(half);
    listeners.push(half_lst);
    Ok(Scenario {
        _streams: keep,
        _listeners: listeners,
        half_client,
    })
}

fn keys(socks: &[Socket]) -> BTreeSet<(SocketAddr, SocketAddr)> {
    socks.iter().map(Socket::key).collect()
}

fn check() -> anyhow::Result<()> {
    let mut diag = Diag::open()?;
    let scenario = open_scenario(&mut diag)?;

    // The whole table, with tcp_info and without, against ss row for row.
    let full = diag.dump(&Query::all().with_info())?;
    let diffs = diag_ss::compare(&full, &ss(&["-tanoei"])?, false);
    ensure!(
        diffs.is_empty(),
        "dump with tcp_info differs from ss -tanoei: {diffs:#?}"
    );
    let plain = diag.dump(&Query::all())?;
    let diffs = diag_ss::compare(&plain, &ss(&["-tanoe"])?, false);
    ensure!(diffs.is_empty(), "dump differs from ss -tanoe: {diffs:#?}");
    ensure!(plain.iter().all(|s| s.info.is_none()), "tcp_info without asking");

    // What the comparison covered.
    let has = |f: &dyn Fn(&Socket) -> bool| full.iter().any(f);
    ensure!(
        has(&|s| s.state == TcpState::Listen && s.recv_q == 2 && s.backlog_limit == Some(7)),
        "listener"
    );
    ensure!(has(&|s| s.state == TcpState::TimeWait), "no TIME_WAIT socket");
    ensure!(
        has(&|s| s.state == TcpState::Established && s.recv_q == 100),
        "no unread data"
    );
    ensure!(has(&|s| s.timer.kind == TimerKind::KeepAlive), "no keep-alive timer");
    let loopback6: IpAddr = "::1".parse()?;
    ensure!(has(&|s| s.local.ip() == loopback6), "no IPv6 connection");
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{PORT_V6}").parse()?;
    ensure!(has(&|s| s.local == mapped), "no v4-mapped connection");
    ensure!(
        has(&|s| s.info.is_some_and(|i| i.snd_wscale.is_some())),
        "no window scaling to compare"
    );
    ensure!(
        has(&|s| s.info.is_some_and(|i| i.snd_wscale != i.rcv_wscale)),
        "no asymmetric window scaling"
    );

    // The request sock, counted per listener without copying the table.
    let syn = diag.dump(&Query::syn_recv(PORT_HALF))?;
    ensure!(syn.len() == 1, "SYN_RECV on {PORT_HALF}: {syn:#?}");
    ensure!(
        syn[0].state == TcpState::SynRecv && syn[0].remote == scenario.half_client,
        "{:?}",
        syn[0]
    );
    ensure!(
        diag.dump(&Query::syn_recv(PORT_V4))?.is_empty(),
        "SYN_RECV on {PORT_V4}"
    );

    // lookup finds every row, request and TIME_WAIT socks included, and nothing else.
    for s in &full {
        let found = diag
            .lookup(s.local, s.remote, true)?
            .with_context(|| format!("lookup of {s:?}"))?;
        ensure!(
            found.cookie == s.cookie && found.state == s.state,
            "lookup of {s:?} gave {found:?}"
        );
        ensure!(
            found.info.is_some() == s.info.is_some(),
            "tcp_info of {s:?} by lookup: {found:?}"
        );
    }
    let unused: SocketAddr = "127.0.0.1:1".parse()?;
    ensure!(
        diag.lookup(SocketAddr::from(([127, 0, 0, 1], PORT_V4)), unused, false)?
            .is_none(),
        "listener taken for a connection"
    );
    ensure!(
        diag.lookup(unused, "0.0.0.0:0".parse()?, false)?.is_none(),
        "a socket on port 1"
    );
    // An IPv4 endpoint finds the tcp6 socket holding its v4-mapped form.
    let by_v4 = full.iter().find(|s| s.local == mapped).context("mapped")?;
    let v4 = |a: SocketAddr| SocketAddr::new(observer::sys::sockets::canonical(a.ip()), a.port());
    let found = diag
        .lookup(v4(by_v4.local), v4(by_v4.remote), false)?
        .context("mapped lookup by IPv4")?;
    ensure!(found.cookie == by_v4.cookie, "{found:?}");

    // The port filter returns exactly that local port; a family filter only that family.
    for port in [PORT_V4, PORT_V6, PORT_HALF] {
        let want: Vec<Socket> = full.iter().filter(|s| s.local.port() == port).cloned().collect();
        let got = diag.dump(&Query::all().on_port(port))?;
        ensure!(
            !got.is_empty() && keys(&got) == keys(&want),
            "port {port}: {got:#?}\nwant {want:#?}"
        );
    }
    // Several ports at once: exactly the sockets on any of them, whatever their order (ports present or not,
    // 65535 last in the kernel's program, every local port of the table at once).
    let mut every: Vec<u16> = full.iter().map(|s| s.local.port()).collect();
    every.sort_unstable();
    every.dedup();
    ensure!(
        every.len() <= observer::sys::sockets::diag::MAX_FILTER_PORTS,
        "{every:?}"
    );
    for ports in [
        vec![PORT_V6, PORT_V4],
        vec![PORT_HALF, 1, PORT_V4, 65535],
        vec![2, 65535],
        every,
    ] {
        let want: Vec<Socket> = full
            .iter()
            .filter(|s| ports.contains(&s.local.port()))
            .cloned()
            .collect();
        let got = diag.dump(&Query::all().on_ports(&ports))?;
        ensure!(keys(&got) == keys(&want), "ports {ports:?}: {got:#?}\nwant {want:#?}");
    }
    let v6 = diag.dump(&Query::all().of(Families::V6))?;
    ensure!(
        !v6.is_empty() && v6.iter().all(Socket::is_v6),
        "V6 family filter: {v6:#?}"
    );
    ensure!(
        diag.dump(&Query::all().of(Families::V4))?.len() + v6.len() == full.len(),
        "families do not add up"
    );
    // A dump abandoned halfway (here by a panicking callback) does not block the next request.
    let abandoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        diag.dump_with(&Query::all(), |_| panic!("abandoning the dump on purpose"))
    }));
    ensure!(abandoned.is_err(), "the callback did not run");
    ensure!(
        keys(&diag.dump(&Query::all())?) == keys(&full),
        "dump after an abandoned one"
    );

    let listeners = diag.dump(&Query::listeners())?;
    let ss_listeners = ss(&["-tlnoe"])?;
    let diffs = diag_ss::compare(&listeners, &ss_listeners, false);
    ensure!(listeners.len() == 3 && diffs.is_empty(), "listeners: {diffs:#?}");
    Ok(())
}

#[test]
fn dump_matches_ss_and_lookup_finds_every_row() {
    let test = "dump_matches_ss_and_lookup_finds_every_row";
    if !require::root(test) || !require::tool(test, "ss") || !require::tool(test, "nft") {
        return;
    }
    let ns = Netns::new("diag").expect("namespace");
    ns.drop_final_acks(PORT_HALF).expect("nft rule");
    ns.enter(check).expect("thread").unwrap_or_else(|e| panic!("{e:#}"));
}
