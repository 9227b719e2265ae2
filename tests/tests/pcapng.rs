//! `--write FILE.pcapng` end to end: the agent on a veth pair between two namespaces writes a connection (with
//! data and teardown) and an ARP exchange; tshark, the independent reader, opens the file and must see the agent's
//! packets one for one: the same count and order, each Info the agent's summary, the agent's socket side as the
//! packet comment, the interface name and the direction.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    thread,
};

use tests::{
    agent::{self, Agent},
    netns::{Netns, Pair},
    require, traffic, tshark,
};

/// A port no tshark dissector claims, so each Info is TCP's own.
const PORT: u16 = 47_001;
const REQUEST: &[u8] = b"a request from a\n";
const REPLY: &[u8] = b"and a somewhat longer reply from b\n";

/// A file removed when the test ends, also when it fails.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("observer-{tag}-{}.pcapng", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One packet line of the agent: direction, tshark's Info, and what follows the Info (annotations and socket side).
#[derive(Debug)]
struct Line {
    dir: String,
    info: String,
    comment: String,
}

/// Splits `<time> <iface> <dir> <src> → <dst> <PROTO> <len> <INFO>[ · <annotation>]...[ ⇒ <socket side>]`.
fn parse(line: &str) -> Option<Line> {
    let f: Vec<&str> = line.splitn(9, ' ').collect();
    if f.len() != 9 || f[4] != "→" {
        return None;
    }
    let rest = f[8];
    let (before_socket, socket) = match rest.split_once(" ⇒ ") {
        Some((a, s)) => (a, Some(s)),
        None => (rest, None),
    };
    let mut parts = before_socket.split(" · ");
    let info = parts.next().unwrap_or_default().to_owned();
    let annotations: Vec<&str> = parts.collect();
    let comment = match (annotations.is_empty(), socket) {
        (true, None) => String::new(),
        (true, Some(s)) => s.to_owned(),
        (false, None) => annotations.join(" · "),
        (false, Some(s)) => format!("{} ⇒ {s}", annotations.join(" · ")),
    };
    Some(Line {
        dir: f[2].to_owned(),
        info,
        comment,
    })
}

/// One connection from a to b with a request, a reply and the client's close; a's neighbour cache is flushed
/// first, so the exchange starts with ARP.
fn converse(pair: &Pair) {
    let server: SocketAddr = format!("{}:{PORT}", pair.b_addr).parse().expect("address");
    let listener = traffic::listen(&pair.b, server, None).expect("listening in b");
    let served = thread::spawn(move || -> std::io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(tests::wait()))?;
        let mut got = vec![0u8; REQUEST.len()];
        conn.read_exact(&mut got)?;
        conn.write_all(REPLY)?;
        // Wait for the client's FIN, then close: dropping `conn` sends ours.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        Ok(())
    });
    pair.a.ip(&["neigh", "flush", "dev", &pair.a_if]).expect("neigh flush");
    let mut conn = traffic::connect(&pair.a, None, server).expect("connecting from a");
    conn.set_read_timeout(Some(tests::wait())).expect("read timeout");
    conn.write_all(REQUEST).expect("client write");
    let mut reply = vec![0u8; REPLY.len()];
    conn.read_exact(&mut reply).expect("client read");
    drop(conn);
    served.join().expect("server thread").expect("server");
}

/// The direction tshark reads from `epb_flags` (`frame.packet_flags_direction`, printed as hex).
fn direction(value: &str) -> Option<u32> {
    let v = value.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn tshark_reads_the_agents_packets_from_its_pcapng() {
    const NAME: &str = "tshark_reads_the_agents_packets_from_its_pcapng";
    if !require::root(NAME) || !require::tool(NAME, "tshark") {
        return;
    }
    let pair = Pair::new("pn", 226).expect("namespaces");
    let file = TempFile::new("pcapng-e2e");
    let path = file.0.to_str().expect("a UTF-8 path");
    let mut agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--write", path]).expect("starting observer");
    converse(&pair);
    let (n, m) = (REQUEST.len(), REPLY.len());
    let last_ack = format!(" [ACK] Seq={} Ack={} ", n + 2, m + 2);
    let mut seen = Vec::new();
    agent.wait_for(
        |l| parse(l).is_some_and(|e| e.dir == "out" && e.info.contains(&last_ack)),
        tests::wait(),
        &mut seen,
    );
    // SIGTERM: the file must be complete after it too.
    let mut f = agent.stop(libc::SIGTERM).expect("stopping observer");
    seen.append(&mut f.stdout);
    assert_eq!(f.code, Some(0), "{f:#?}");
    let ours: Vec<Line> = seen.iter().filter_map(|l| parse(l)).collect();
    assert!(
        ours.iter().any(|l| l.info.contains(&last_ack)),
        "the final ACK never came: {seen:#?}"
    );
    assert!(
        ours.iter().any(|l| l.info.starts_with("Who has ")),
        "no ARP request: {seen:#?}"
    );

    let fields = [
        "frame.interface_name",
        "frame.packet_flags_direction",
        "frame.comment",
        "_ws.col.Info",
    ];
    let mut args: Vec<String> = tshark::TCP_PREFS.map(str::to_owned).into();
    args.extend(tshark::field_args(&fields));
    let lines = tshark::read(Path::new(path), &args).expect("tshark -r opens the file");
    let theirs = tshark::rows(&fields, &lines).expect("tshark's fields");
    assert_eq!(
        theirs.len(),
        ours.len(),
        "packet counts differ:\nours {ours:#?}\ntshark {theirs:#?}"
    );
    let mut commented = 0;
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        let frame = i + 1;
        assert_eq!(t.get("_ws.col.Info"), o.info, "frame {frame}: Info");
        assert_eq!(t.get("frame.comment"), o.comment, "frame {frame}: comment");
        assert_eq!(t.get("frame.interface_name"), pair.a_if, "frame {frame}: interface");
        let want = if o.dir == "out" { 2 } else { 1 };
        assert_eq!(
            direction(t.get("frame.packet_flags_direction")),
            Some(want),
            "frame {frame}: direction of {o:?}"
        );
        commented += usize::from(!o.comment.is_empty());
    }
    assert!(commented > 0, "no packet carried the socket side: {ours:#?}");
    eprintln!("{NAME}: {} packets compared, {commented} with comments", ours.len());
}

/// A file that cannot be created is a one-line error naming it, before anything is attached.
#[test]
fn an_unwritable_file_is_refused_before_attaching() {
    const NAME: &str = "an_unwritable_file_is_refused_before_attaching";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("pw", 227).expect("namespaces");
    let bin = agent::binary().expect("the observer binary");
    let bad = "/nonexistent-observer-dir/out.pcapng";
    let out = pair
        .a
        .command(bin.to_str().expect("a UTF-8 path"))
        .args(["--iface", &pair.a_if, "--write", bad])
        .output()
        .expect("running observer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("observer: error: cannot create {bad}: No such file or directory (os error 2)"),
    );
    assert!(!stderr.contains(agent::READY), "attached before failing: {stderr}");
}

/// On a loopback device every packet passes TC twice, out and then in. tshark and tcpdump see it once, and so
/// does the analysis: the copy coming in carries the frame number and flags of the one that went out (a clean
/// connection has no expert flags at all), and the file holds each packet once, Info for Info.
#[test]
fn loopback_packets_are_one_frame_each() {
    const NAME: &str = "loopback_packets_are_one_frame_each";
    if !require::root(NAME) || !require::tool(NAME, "tshark") {
        return;
    }
    let ns = Netns::new("lo").expect("namespace");
    let file = TempFile::new("pcapng-lo");
    let path = file.0.to_str().expect("a UTF-8 path");
    let mut agent = Agent::start(&ns, &["--iface", "lo", "--json", "--write", path]).expect("starting observer");
    let server: SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("address");
    let listener = traffic::listen(&ns, server, None).expect("listening");
    let mut conn = traffic::connect(&ns, None, server).expect("connecting");
    let (mut accepted, _) = listener.accept().expect("accept");
    conn.write_all(REQUEST).expect("client write");
    let mut got = vec![0u8; REQUEST.len()];
    accepted.read_exact(&mut got).expect("server read");
    accepted.write_all(REPLY).expect("server write");
    let mut reply = vec![0u8; REPLY.len()];
    conn.read_exact(&mut reply).expect("client read");
    drop(conn);
    drop(accepted);
    let mut seen = Vec::new();
    agent.wait_for(|l| l.contains(r#""event":"teardown""#), tests::wait(), &mut seen);
    let mut f = agent.stop(libc::SIGINT).expect("stopping observer");
    seen.append(&mut f.stdout);
    let tcp: Vec<serde_json::Value> = seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["proto"] == "tcp")
        .collect();
    assert!(seen.iter().any(|l| l.contains(r#""event":"teardown""#)), "{seen:#?}");
    let (outs, ins): (Vec<_>, Vec<_>) = tcp.iter().partition(|v| v["direction"] == "out");
    let frames =
        |list: &[&serde_json::Value]| -> Vec<u64> { list.iter().map(|v| v["frame"].as_u64().unwrap()).collect() };
    assert_eq!(
        frames(&outs),
        frames(&ins),
        "each packet in twice, as the same frame: {tcp:#?}"
    );
    assert!(
        tcp.iter().all(|v| v["expert"] == serde_json::json!([])),
        "no flags on a clean connection: {tcp:#?}"
    );

    let mut args: Vec<String> = tshark::TCP_PREFS.map(str::to_owned).into();
    args.extend(tshark::field_args(&["_ws.col.Info"]));
    let theirs = tshark::read(Path::new(path), &args).expect("tshark -r opens the file");
    let ours: Vec<&str> = outs.iter().map(|v| v["summary"].as_str().unwrap()).collect();
    assert_eq!(theirs, ours, "the file holds each packet once, Info for Info");
    eprintln!("{NAME}: {} packets, each seen out and in", ours.len());
}
