//! ARP end to end: the agent on veth-a beside tshark (the oracle for every Info) and `ip neigh` (the oracle for
//! the neighbour entries): a resolution with its response time and neighbour entry, an unanswered request with
//! its retries and give-up, and crafted gratuitous, probe, announcement and duplicate-address frames.
//! Subnets 228-230, 239 and 241; traffic stays inside the namespaces each test creates.

use std::{thread, time::Duration};

use tests::{
    agent::{Agent, Finished},
    netns::{self, Netns, Pair},
    require, traffic,
    tshark::{Tshark, field_args},
};

/// One ARP line of the agent: the Source and Destination columns and Info (tshark's), and the annotations after
/// them.
#[derive(Clone, Debug)]
struct ArpLine {
    /// 1-based frame number: position among the agent's wire lines.
    frame: usize,
    src: String,
    dst: String,
    info: String,
    notes: Vec<String>,
}

/// Whether a text line is a wire line (`<time> <iface> <dir> <src> → <dst> <PROTO> <len> ...`).
fn is_wire(line: &str) -> bool {
    line.split(' ').nth(4) == Some("→")
}

/// The ARP lines of the agent's output, numbered as the agent numbers frames.
fn arp_lines(stdout: &[String]) -> Vec<ArpLine> {
    stdout
        .iter()
        .filter(|l| is_wire(l))
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<&str> = l.splitn(9, ' ').collect();
            (f.len() == 9 && f[6] == "ARP").then(|| {
                let mut parts = f[8].split(" · ");
                ArpLine {
                    frame: i + 1,
                    src: f[3].to_owned(),
                    dst: f[5].to_owned(),
                    info: parts.next().unwrap_or_default().to_owned(),
                    notes: parts.map(str::to_owned).collect(),
                }
            })
        })
        .collect()
}

/// tshark's ARP columns on `iface`: with its default name resolution (MAC vendor names), or `numeric` (-n).
fn tshark_arp(ns: &Netns, iface: &str, numeric: bool) -> Tshark {
    let mut args: Vec<String> = ["-f", "arp"].map(str::to_owned).into();
    args.extend(field_args(&["_ws.col.Source", "_ws.col.Destination", "_ws.col.Info"]));
    if numeric {
        Tshark::start(ns, iface, &args)
    } else {
        Tshark::start_resolving(ns, iface, &args)
    }
    .expect("starting tshark")
}

/// Gives `iface` a MAC address of a virtual NIC's vendor (VMware's 00:50:56 and 00:0c:29, VirtualBox's 08:00:27),
/// as the users' own adapters have.
fn set_mac(ns: &Netns, iface: &str, mac: &str) {
    ns.ip(&["link", "set", "dev", iface, "address", mac])
        .expect("ip link set address");
}

/// Stops the agent once a line satisfies `done` (bounded), with every line it printed.
fn stop_after(mut agent: Agent, done: impl Fn(&str) -> bool) -> Finished {
    let mut seen = Vec::new();
    agent.wait_for(done, tests::wait(), &mut seen);
    let mut f = agent.stop(libc::SIGINT).expect("stopping observer");
    seen.append(&mut f.stdout);
    f.stdout = seen;
    f
}

/// Our Source, Destination and Info columns, in order, must be tshark's.
fn assert_tshark_agrees(ours: &[ArpLine], tshark: Tshark) {
    let theirs = tshark.stop_after(ours.len());
    let ours: Vec<String> = ours
        .iter()
        .map(|l| format!("{}\t{}\t{}", l.src, l.dst, l.info))
        .collect();
    assert_eq!(ours, theirs, "observer's ARP columns vs tshark's");
}

fn mac(ns: &Netns, iface: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", iface]).expect("ip link");
    out.split_whitespace()
        .nth(2)
        .expect("a MAC in `ip -br link`")
        .to_owned()
}

/// `ip neigh show <ip> dev <iface>` as (lladdr, state), None without an entry.
fn ip_neigh(ns: &Netns, iface: &str, ip: &str) -> Option<(Option<String>, String)> {
    let out = ns.ip(&["neigh", "show", ip, "dev", iface]).expect("ip neigh");
    let t: Vec<&str> = out.split_whitespace().collect();
    let state = t.last()?.to_string();
    let lladdr = t
        .iter()
        .position(|w| *w == "lladdr")
        .and_then(|i| t.get(i + 1))
        .map(|s| s.to_string());
    Some((lladdr, state))
}

fn ping(ns: &Netns, ip: &str, wait_secs: &str) {
    // Its exit status is not the point: the ARP it causes is.
    let _ = netns::run(ns.command("ping").args(["-c1", "-W", wait_secs, ip]));
}

/// A resolution: the reply names the request it answers and carries the neighbour entry it made, which is what
/// `ip neigh` shows afterwards; tshark prints the same Info.
#[test]
fn resolution_shows_response_time_and_neighbour_entry() {
    const NAME: &str = "resolution_shows_response_time_and_neighbour_entry";
    if !require::root(NAME) || !require::tool(NAME, "tshark") || !require::tool(NAME, "ping") {
        return;
    }
    let pair = Pair::new("ar", 228).expect("namespaces");
    set_mac(&pair.a, &pair.a_if, "00:50:56:c0:00:08");
    set_mac(&pair.b, &pair.b_if, "00:0c:29:aa:bb:cc");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if]).expect("starting observer");
    let tshark = tshark_arp(&pair.a, &pair.a_if, false);
    pair.a.ip(&["neigh", "flush", "dev", &pair.a_if]).expect("neigh flush");
    ping(&pair.a, &pair.b_addr, "5");
    // The entry shows on the reply's line, or, when the agent read it only after printing the reply (a loaded
    // machine), on a neighbour line naming the reply.
    let f = stop_after(agent, |l| {
        (l.contains(" is at ") && l.contains(" · neigh ")) || (l.contains(" neigh ") && l.contains(" · after #"))
    });
    let lines = arp_lines(&f.stdout);
    let (b, a) = (&pair.b_addr, &pair.a_addr);
    let req = lines
        .iter()
        .find(|l| l.info == format!("Who has {b}? Tell {a}"))
        .unwrap_or_else(|| panic!("no request in {:#?}", f.stdout));
    assert_eq!((req.src.as_str(), req.dst.as_str()), ("VMware_c0:00:08", "Broadcast"));
    let b_mac = mac(&pair.b, &pair.b_if);
    let reply = lines
        .iter()
        .find(|l| l.info == format!("{b} is at {b_mac}"))
        .unwrap_or_else(|| panic!("no reply in {:#?}", f.stdout));
    assert_eq!(
        (reply.src.as_str(), reply.dst.as_str()),
        ("VMware_aa:bb:cc", "VMware_c0:00:08")
    );
    assert!(
        reply
            .notes
            .iter()
            .any(|n| n.starts_with(&format!("answers #{} in ", req.frame))),
        "{reply:?} should answer frame {}",
        req.frame
    );
    let (lladdr, state) = ip_neigh(&pair.a, &pair.a_if, b).expect("ip neigh has the entry");
    assert_eq!(lladdr.as_deref(), Some(b_mac.as_str()));
    let note = reply.notes.iter().find(|n| n.starts_with("neigh ")).cloned();
    let own_line = f
        .stdout
        .iter()
        .find(|l| l.ends_with(&format!(" · after #{}", reply.frame)) && l.contains(&format!(" neigh {b} ")))
        .cloned();
    match (note, own_line) {
        (Some(neigh), _) => assert!(
            neigh.starts_with(&format!("neigh {b} ")) && neigh.ends_with(&format!("{state} {b_mac}")),
            "{neigh:?} vs ip neigh {state} {b_mac}"
        ),
        (None, Some(line)) => assert!(
            line.contains(&format!(" neigh {b} {b_mac} {state} ")),
            "{line:?} vs ip neigh {state} {b_mac}"
        ),
        (None, None) => panic!("no neighbour entry for the reply in {:#?}", f.stdout),
    }
    assert!(
        f.stderr
            .iter()
            .any(|l| l.starts_with("arp: ") && l.contains("1 answered")),
        "{:#?}",
        f.stderr
    );
    assert_tshark_agrees(&lines, tshark);
}

/// A request nobody answers: the kernel's retries are marked, the question is given up once with the number of
/// tries tshark saw, and the neighbour entry's FAILED state is what `ip neigh` shows.
#[test]
fn unanswered_request_is_retried_and_given_up() {
    const NAME: &str = "unanswered_request_is_retried_and_given_up";
    if !require::root(NAME) || !require::tool(NAME, "tshark") || !require::tool(NAME, "ping") {
        return;
    }
    let pair = Pair::new("au", 229).expect("namespaces");
    set_mac(&pair.a, &pair.a_if, "08:00:27:12:34:56");
    // Numeric, as tshark -n: the vendor's name and Broadcast stay raw.
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "-n"]).expect("starting observer");
    let tshark = tshark_arp(&pair.a, &pair.a_if, true);
    let nobody = "10.229.0.99";
    ping(&pair.a, nobody, "5");
    let f = stop_after(agent, |l| l.contains(" unanswered after "));
    let ask = format!("Who has {nobody}? Tell {}", pair.a_addr);
    let lines = arp_lines(&f.stdout);
    let tries: Vec<&ArpLine> = lines.iter().filter(|l| l.info == ask).collect();
    assert!(tries.len() >= 2, "the kernel retries: {:#?}", f.stdout);
    assert_eq!(
        (tries[0].src.as_str(), tries[0].dst.as_str()),
        ("08:00:27:12:34:56", "ff:ff:ff:ff:ff:ff")
    );
    for (i, t) in tries.iter().enumerate() {
        let want: Vec<String> = (i > 0).then(|| format!("retry {i}, unanswered")).into_iter().collect();
        assert_eq!(t.notes, want, "try {}", i + 1);
    }
    let gave_up: Vec<&String> = f.stdout.iter().filter(|l| l.contains(" unanswered after ")).collect();
    let (first, last) = (tries[0].frame, tries[tries.len() - 1].frame);
    assert_eq!(gave_up.len(), 1, "given up once: {:#?}", f.stdout);
    assert!(
        gave_up[0].ends_with(&format!(
            " arp {} {ask} · unanswered after {} tries, #{first} to #{last}",
            pair.a_if,
            tries.len()
        )),
        "{gave_up:?}"
    );
    if let Some((_, state)) = ip_neigh(&pair.a, &pair.a_if, nobody) {
        let ours = f
            .stdout
            .iter()
            .rfind(|l| l.split(' ').nth(1) == Some("neigh") && l.contains(&format!(" neigh {nobody} ")))
            .unwrap_or_else(|| panic!("no neigh line for {nobody}: {:#?}", f.stdout));
        let state_word = ours.split(' ').nth(4).unwrap_or_default();
        assert!(state_word.ends_with(&state), "{ours:?} vs ip neigh {state}");
    }
    assert!(
        f.stderr
            .iter()
            .any(|l| l.starts_with("arp: ") && l.contains("1 unanswered")),
        "{:#?}",
        f.stderr
    );
    assert_tshark_agrees(&lines, tshark);
}

/// An Ethernet ARP frame, padded to the 60-byte minimum.
fn arp_frame(eth_dst: [u8; 6], op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    for part in [&sha[..], &spa[..], &tha[..], &tpa[..]] {
        f.extend_from_slice(part);
    }
    f.resize(60, 0);
    f
}

/// Sends `frames` on `iface` of `ns` through an AF_PACKET socket.
fn send_frames(ns: &Netns, iface: &str, frames: Vec<Vec<u8>>) {
    let name = std::ffi::CString::new(iface).expect("interface name");
    ns.enter(move || {
        // SAFETY: plain socket(2), if_nametoindex(3), sendto(2) and close(2) calls with valid buffers.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ARP as u16).to_be()),
            );
            assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            sll.sll_halen = 6;
            for f in &frames {
                sll.sll_addr[..6].copy_from_slice(&f[..6]);
                let sent = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(sent, f.len() as isize, "sendto: {}", std::io::Error::last_os_error());
                thread::sleep(Duration::from_millis(20));
            }
            libc::close(fd);
        }
    })
    .expect("entering the namespace");
}

fn octets(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("six octets")
}

fn ipv4(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>().expect("IPv4").octets()
}

/// Crafted frames from b: a gratuitous request and reply, a probe, an announcement, and a request from a second
/// MAC claiming b's address (duplicate), which a's kernel answers. Every Info is tshark's; the reply to the
/// duplicate's request names it.
#[test]
fn crafted_gratuitous_probe_announcement_and_duplicate() {
    const NAME: &str = "crafted_gratuitous_probe_announcement_and_duplicate";
    if !require::root(NAME) || !require::tool(NAME, "tshark") {
        return;
    }
    let pair = Pair::new("ag", 230).expect("namespaces");
    set_mac(&pair.b, &pair.b_if, "08:00:27:00:00:02");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if]).expect("starting observer");
    let tshark = tshark_arp(&pair.a, &pair.a_if, false);
    let (bc, zero) = ([0xff; 6], [0; 6]);
    let b_mac = octets(&mac(&pair.b, &pair.b_if));
    let other = [0x00, 0x0c, 0x29, 0, 0, 9];
    let (a_ip, b_ip, spare) = (ipv4(&pair.a_addr), ipv4(&pair.b_addr), [10, 230, 0, 7]);
    send_frames(
        &pair.b,
        &pair.b_if,
        vec![
            arp_frame(bc, 1, b_mac, b_ip, bc, b_ip),
            arp_frame(bc, 1, b_mac, [0; 4], zero, spare),
            arp_frame(bc, 1, b_mac, spare, zero, spare),
            arp_frame(bc, 2, b_mac, b_ip, bc, b_ip),
            arp_frame(bc, 1, other, b_ip, zero, a_ip),
        ],
    );
    let f = stop_after(agent, |l| l.contains(" · answers #"));
    let lines = arp_lines(&f.stdout);
    let b = &pair.b_addr;
    for want in [
        format!("Gratuitous ARP for {b} (Request)"),
        "Who has 10.230.0.7? (ARP Probe)".to_owned(),
        "ARP Announcement for 10.230.0.7".to_owned(),
        format!("Gratuitous ARP for {b} (Reply)"),
        format!("Who has {}? Tell {b} (duplicate use of {b} detected!)", pair.a_addr),
    ] {
        assert!(lines.iter().any(|l| l.info == want), "no {want:?} in {:#?}", f.stdout);
    }
    let dup = lines
        .iter()
        .position(|l| l.info.contains("duplicate use"))
        .expect("duplicate");
    let reply = lines
        .iter()
        .find(|l| l.notes.iter().any(|n| n.starts_with("answers #")))
        .expect("reply");
    assert!(
        reply.notes[0].starts_with(&format!("answers #{} in ", lines[dup].frame)),
        "{reply:?} answers the duplicate's request"
    );
    assert!(
        f.stderr.iter().any(|l| l.contains("2 gratuitous, 1 announcements")),
        "{:#?}",
        f.stderr
    );
    assert_tshark_agrees(&lines, tshark);
}

/// Puts `host` on bridge `br0` of `br`: a veth pair `iface` (in `host`, with `addr`/24) and `br-<iface>` (a port).
fn join_bridge(br: &Netns, host: &Netns, iface: &str, addr: &str) {
    let port = format!("br-{iface}");
    host.ip(&[
        "link", "add", iface, "type", "veth", "peer", "name", &port, "netns", &br.name,
    ])
    .expect("veth pair");
    br.ip(&["link", "set", &port, "master", "br0", "up"])
        .expect("bridge port");
    host.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])
        .expect("address");
    host.ip(&["link", "set", iface, "up"]).expect("link up");
}

/// Two hosts, b and c, both configured with 10.239.0.2 and bridged with a, ask a for its address in turn: c's
/// request is flagged as a duplicate use of the address, observer's Info of every ARP packet is tshark's, and
/// observer's JSON names b's MAC as the one first seen with it.
#[test]
fn two_hosts_claiming_one_ip() {
    const NAME: &str = "two_hosts_claiming_one_ip";
    const A: &str = "10.239.0.1";
    const SHARED: &str = "10.239.0.2";
    if !require::root(NAME) || !require::tool(NAME, "tshark") || !require::tool(NAME, "ping") {
        return;
    }
    let (a, b, c, br) = (
        Netns::new("a2a").expect("namespace a"),
        Netns::new("a2b").expect("namespace b"),
        Netns::new("a2c").expect("namespace c"),
        Netns::new("a2br").expect("namespace br"),
    );
    br.ip(&["link", "add", "br0", "type", "bridge"]).expect("bridge");
    br.ip(&["link", "set", "br0", "up"]).expect("bridge up");
    join_bridge(&br, &a, "veth-a", A);
    join_bridge(&br, &b, "veth-b", SHARED);
    join_bridge(&br, &c, "veth-c", SHARED);
    set_mac(&b, "veth-b", "00:0c:29:00:00:0b");
    set_mac(&c, "veth-c", "08:00:27:00:00:0c");
    let (b_mac, c_mac) = (mac(&b, "veth-b"), mac(&c, "veth-c"));
    let agent = Agent::start(&a, &["--iface", "veth-a", "--json"]).expect("starting observer");
    let tshark = tshark_arp(&a, "veth-a", false);
    ping(&b, A, "5");
    ping(&c, A, "5");
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    let f = stop_after(agent, |l| {
        json(l).is_some_and(|v| v["operation"] == "reply" && v["target_mac"] == c_mac.as_str())
    });
    let arp: Vec<serde_json::Value> = f
        .stdout
        .iter()
        .filter_map(|l| json(l))
        .filter(|v| v["proto"] == "arp")
        .collect();
    let request_from = |m: &str| {
        arp.iter()
            .find(|v| v["operation"] == "request" && v["sender_mac"] == m)
            .unwrap_or_else(|| panic!("no request from {m} in {:#?}", f.stdout))
    };
    let (first, second) = (request_from(&b_mac), request_from(&c_mac));
    assert_eq!(first["summary"], format!("Who has {A}? Tell {SHARED}"), "{first}");
    assert_eq!(first["duplicate_of"], serde_json::Value::Null, "{first}");
    let flagged = format!("Who has {A}? Tell {SHARED} (duplicate use of {SHARED} detected!)");
    assert_eq!(second["summary"], flagged.as_str(), "{second}");
    assert_eq!(second["duplicate_of"], b_mac.as_str(), "{second} names the first MAC");
    // JSON keeps the raw addresses and names them as tshark's eth.src_resolved and eth.dst_resolved do.
    assert_eq!(
        (&second["src"], &second["src_resolved"], &second["dst_resolved"]),
        (&c_mac.as_str().into(), &"PcsCompu_00:00:0c".into(), &"Broadcast".into()),
        "{second}"
    );
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let ours: Vec<String> = arp
        .iter()
        .map(|v| {
            format!(
                "{}\t{}\t{}",
                text(v, "src_resolved"),
                text(v, "dst_resolved"),
                text(v, "summary")
            )
        })
        .collect();
    let theirs = tshark.stop_after(ours.len());
    let at = ours.iter().position(|s| s.ends_with(&flagged)).expect("flagged above");
    assert!(
        theirs.get(at).is_some_and(|t| t.ends_with(&flagged)),
        "tshark flags the same packet: {theirs:#?}"
    );
    assert_eq!(ours, theirs, "observer's ARP columns vs tshark's");
}

/// A connection to a neighbour not yet resolved: the SYN leaves only after the ARP reply, and its line names the
/// request and reply it waited on (JSON `arp_wait`), the wait counted from the request; a second connection, with
/// the entry cached, waited on nothing.
#[test]
fn a_syn_waits_on_resolution() {
    const NAME: &str = "a_syn_waits_on_resolution";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("aw", 241).expect("namespaces");
    let server: std::net::SocketAddr = format!("{}:46200", pair.b_addr).parse().expect("address");
    let listener = traffic::listen(&pair.b, server, None).expect("listening in b");
    let agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--json"]).expect("starting observer");
    pair.a.ip(&["neigh", "flush", "dev", &pair.a_if]).expect("neigh flush");
    let first = traffic::connect(&pair.a, None, server).expect("first connection");
    let second = traffic::connect(&pair.a, None, server).expect("second connection");
    let syns = std::cell::Cell::new(0);
    let f = stop_after(agent, |l| {
        let syn = l.contains("\"flags\":[\"SYN\"]") && l.contains("\"direction\":\"out\"");
        syns.set(syns.get() + usize::from(syn));
        syns.get() == 2
    });
    drop((first, second, listener));
    let all: Vec<serde_json::Value> = f.stdout.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let by_frame = |n: &serde_json::Value| all.iter().find(|v| v["frame"] == *n && v["proto"] != "analysis");
    let syn: Vec<&serde_json::Value> = all
        .iter()
        .filter(|v| v["proto"] == "tcp" && v["flags"] == serde_json::json!(["SYN"]) && v["direction"] == "out")
        .collect();
    assert_eq!(syn.len(), 2, "two SYNs in {all:#?}");
    let wait = &syn[0]["arp_wait"];
    assert_eq!(wait["target"], pair.b_addr.as_str(), "{:#}", syn[0]);
    let request = by_frame(&wait["request_frame"]).expect("the request's frame");
    let reply = by_frame(&wait["reply_frame"]).expect("the reply's frame");
    let (b, a) = (&pair.b_addr, &pair.a_addr);
    assert_eq!(request["summary"], format!("Who has {b}? Tell {a}"));
    assert!(
        reply["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{b} is at ")))
    );
    let ts = |v: &serde_json::Value| v["ts_ns"].as_u64().expect("ts_ns");
    let frame = |v: &serde_json::Value| v["frame"].as_u64().expect("frame");
    assert!(frame(request) < frame(reply) && frame(reply) < frame(syn[0]));
    assert_eq!(wait["wait_ns"].as_u64(), Some(ts(syn[0]) - ts(request)));
    assert_eq!(
        syn[1]["arp_wait"],
        serde_json::Value::Null,
        "the entry was cached: {:#}",
        syn[1]
    );
}
