//! Live fuzzing: 100,000 random and malformed frames of the oracle's generator (truncated headers, bad IHL and
//! data offsets, option lengths that overrun, VLAN stacks, IPv6 extension chains, odd ARP) sent raw over the
//! test's veth pair through the real attached programs. The agent must not crash or stall, and its exit
//! report must account for every frame: per outcome, as many as etherparse's reading of the frames sent says
//! (less the few the stack drops before TC, see [`reaches_tc`]).

use std::{collections::BTreeMap, time::Duration};

use tests::{
    agent::Agent,
    netns::{Netns, Pair},
    oracle::{self, Expected},
    require,
};

/// Frames sent.
const FRAMES: usize = 100_000;
/// Frames a batch: small enough that the veth's backlog keeps them all.
const BATCH: usize = 500;
/// Ethernet header, the least AF_PACKET sends; and the largest frame the veth's MTU of 1500 passes.
const FRAME_LEN: std::ops::RangeInclusive<usize> = 14..=1514;

/// Turns IPv6 off on `iface` in `ns`, so the kernel sends no router solicitations or MLD reports of its own.
fn quiet(ns: &Netns, iface: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    ns.enter(move || std::fs::write(&path, "1"))
        .expect("entering the namespace")
        .expect("disabling IPv6");
}

/// `name` of the interface's statistics in `ns`.
fn stat(ns: &Netns, iface: &str, name: &str) -> u64 {
    let path = format!("/sys/class/net/{iface}/statistics/{name}");
    let text = tests::netns::run(ns.command("cat").arg(&path)).expect("reading the interface statistics");
    text.trim().parse().expect("a number")
}

/// Whether a frame received by the veth reaches TC ingress: the stack drops a frame whose outer EtherType is a
/// VLAN tag when it ends before the tag and the EtherType after it (skb_vlan_untag pulls VLAN_HLEN + 2 bytes
/// past the Ethernet header first), before any hook sees it.
fn reaches_tc(frame: &[u8]) -> bool {
    const TPIDS: [u16; 2] = [0x8100, 0x88a8];
    let tagged = frame.len() >= 14 && TPIDS.contains(&u16::from_be_bytes([frame[12], frame[13]]));
    !tagged || frame.len() >= 14 + 4 + 2
}

#[test]
fn a_hundred_thousand_fuzzed_frames_are_each_accounted_for() {
    const NAME: &str = "a_hundred_thousand_fuzzed_frames_are_each_accounted_for";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("fz", 180).expect("namespaces");
    quiet(&pair.a, &pair.a_if);
    quiet(&pair.b, &pair.b_if);
    let frames: Vec<Vec<u8>> = oracle::random_frames(0xf0_22ed, FRAMES * 2)
        .into_iter()
        .filter(|f| FRAME_LEN.contains(&f.len()))
        .take(FRAMES)
        .collect();
    assert_eq!(frames.len(), FRAMES, "the generator made too few sendable frames");
    let reaching: Vec<&Vec<u8>> = frames.iter().filter(|f| reaches_tc(f)).collect();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for f in &reaching {
        let class = match oracle::expected(f) {
            Expected::Tcp(_) | Expected::Arp(_) => "recorded",
            Expected::Rejected(_) => "malformed",
            Expected::NotTcp => "not recorded",
        };
        *expected.entry(class).or_default() += 1;
    }

    let mut agent = Agent::start(&pair.a, &["--iface", &pair.a_if, "--no-sockets"]).expect("starting observer");
    let received_before = stat(&pair.a, &pair.a_if, "rx_packets");
    for batch in frames.chunks(BATCH) {
        pair.b.inject(&pair.b_if, batch.to_vec());
        std::thread::sleep(Duration::from_millis(2));
    }
    let received = stat(&pair.a, &pair.a_if, "rx_packets") - received_before;
    // Still alive and answering: it detaches and reports on SIGINT.
    let f = agent.stop(libc::SIGINT).expect("stopping observer");
    assert_eq!(f.code, Some(0), "{:#?}", f.stderr);
    assert!(!f.stderr.iter().any(|l| l.contains("panicked")), "{:#?}", f.stderr);
    assert_eq!(received, FRAMES as u64, "the veth lost frames: {:#?}", f.stderr);

    // A record, or folded into its flow's counters when the ring passed its high-water mark (a slow guest).
    let recorded = f.counter("records") + f.counter("full") + f.counter("folded");
    let not_recorded = [
        "filtered",
        "control_only_suppressed",
        "not_tcp_or_arp",
        "arp_unsupported",
        "non_first_fragment",
    ]
    .iter()
    .map(|c| f.counter(c))
    .sum::<u64>();
    let got = BTreeMap::from([
        ("recorded", recorded),
        ("malformed", f.counter("malformed")),
        ("not recorded", not_recorded),
    ]);
    assert_eq!(f.counter("ingress"), reaching.len() as u64, "{:#?}", f.stderr);
    assert_eq!(
        recorded + f.counter("malformed") + not_recorded,
        f.counter("ingress") + f.counter("egress"),
        "every frame seen has one outcome: {:#?}",
        f.stderr
    );
    assert_eq!(got, expected, "outcomes against etherparse's reading: {:#?}", f.stderr);
    // `records: E emitted, P printed, U undecodable`: each token's number comes before the next word.
    let (emitted, printed, undecodable) = (f.counter("records"), f.counter("emitted"), f.counter("printed"));
    assert_eq!(
        (printed, undecodable),
        (emitted, 0),
        "every record emitted is printed: {:#?}",
        f.stderr
    );
}
