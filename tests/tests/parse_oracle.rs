//! Differential tests: observer's frame parser against etherparse 0.19, through `tests::oracle`.
//!
//! The oracle reads each frame with etherparse's header slicers. Where observer's design deliberately differs
//! from etherparse, the oracle applies the design rule (`oracle::Rule`, commented where it is applied):
//! - `VlanLimit`: at most two VLAN tags, a third is TooManyVlanTags (etherparse reads three, then stops).
//! - `Macsec`: MACsec frames are ignored (etherparse decodes unencrypted MACsec).
//! - `Ipv4Auth`: an IPv4 authentication header is not skipped, the packet is ignored (etherparse skips it).
//! - `FirstFragment`: only non-first fragments are ignored; a first fragment is parsed (etherparse decodes no
//!   fragment's transport header).
//! - `Ipv6FragmentBits`: the IPv6 fragment offset and M flag are read per RFC 8200 (etherparse 0.19 reads the
//!   low five bits of byte 3 as offset and its top bit as M — an etherparse bug, observer is right).
//! - `Ipv6LaterFragment`: a non-first IPv6 fragment is NonFirstFragment as soon as its fragment header is read;
//!   what follows is fragment data (etherparse goes on reading it as extension headers and may reject it).
//! - `Ipv6ZeroPayloadLength`: IPv6 payload length 0 is an empty payload (etherparse assumes a jumbogram).
//! - `ExtHeaderLimit`: at most six IPv6 extension headers, a seventh is TooManyExtHeaders (etherparse: no limit).
//! - `ExtHeaderKinds`: a hop-by-hop header after the first, mobility (135), HIP (139) and shim6 (140) are
//!   skipped by length (etherparse rejects a late hop-by-hop and stops at the other three).
//! - `AuthZeroLength`: an IPv6 authentication header with payload length 0 is skipped as 8 bytes (etherparse
//!   rejects it).
//! - `ArpEthernetIpv4`: ARP is one 28-byte Ethernet/IPv4 body: other types are ArpUnsupported, a shorter body is
//!   Truncated (etherparse reads any types and address sizes).
//! - `UnknownOption`: an unknown TCP option kind is skipped by its length and marks OPT_UNKNOWN; a length
//!   below 2 is BadOptionLength, past the header OptionOverrun (etherparse's option iterator stops at it).
//!
//! Where no rule applied, the oracle's layered reading is also held against etherparse's whole-packet reading
//! (`SlicedPacket`), so the layering itself is checked too.

use std::collections::BTreeMap;

use etherparse::{NetSlice, SlicedPacket, TransportSlice, err};
use observer_common::{
    Counter,
    parse::{Parsed, parse_frame},
};
use tests::oracle::{self, Expected, Outcome, Rule, Verdict};

/// Seed of the random run; `PARSE_ORACLE_SEED` (decimal or 0x-hex) explores others.
const SEED: u64 = 0x0b5e_7e57;
/// Frames in the random run.
const RANDOM_FRAMES: usize = 20_000;

/// Coarse outcome classes shared by the oracle and etherparse's whole-packet reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Tcp,
    Arp,
    Rejected,
    NotTcp,
}

fn class(expected: &Expected) -> Class {
    match expected {
        Expected::Tcp(_) => Class::Tcp,
        Expected::Arp(_) => Class::Arp,
        Expected::Rejected(_) => Class::Rejected,
        Expected::NotTcp => Class::NotTcp,
    }
}

/// etherparse's own reading of the whole frame; it leaves TCP options to an iterator, so they are read here.
fn whole_packet_class(frame: &[u8]) -> Class {
    use err::{Layer, packet::SliceError};
    match SlicedPacket::from_ethernet(frame) {
        // Observer does not read UDP or ICMP, so their errors make the frame ignored, not malformed.
        Err(SliceError::Len(e))
            if matches!(
                e.layer,
                Layer::UdpHeader
                    | Layer::UdpPayload
                    | Layer::Icmpv4
                    | Layer::Icmpv4Timestamp
                    | Layer::Icmpv4TimestampReply
                    | Layer::Icmpv6
            ) =>
        {
            Class::NotTcp
        }
        Err(_) => Class::Rejected,
        Ok(packet) => match (&packet.net, &packet.transport) {
            (_, Some(TransportSlice::Tcp(tcp))) if tcp.options_iterator().any(|o| o.is_err()) => Class::Rejected,
            (_, Some(TransportSlice::Tcp(_))) => Class::Tcp,
            (Some(NetSlice::Arp(_)), _) => Class::Arp,
            _ => Class::NotTcp,
        },
    }
}

/// Parses `frame` and checks the outcome against the oracle and, when no design rule applied, the oracle's
/// class against etherparse's whole-packet reading.
fn differential(frame: &[u8]) -> Result<(Result<Parsed, Counter>, Verdict), String> {
    let got = parse_frame(frame);
    let verdict = oracle::verdict(frame);
    oracle::check(&got, &verdict.expected)?;
    if verdict.rules.is_empty() {
        let whole = whole_packet_class(frame);
        if whole != class(&verdict.expected) {
            return Err(format!(
                "oracle expected {}, etherparse's whole-packet reading is {whole:?}",
                verdict.expected.describe()
            ));
        }
    }
    Ok((got, verdict))
}

/// Short outcome name for summaries.
fn outcome_name(got: &Result<Parsed, Counter>) -> &'static str {
    match got {
        Ok(Parsed::Tcp(_)) => "tcp_record",
        Ok(Parsed::Arp(_)) => "arp_record",
        Err(counter) => counter.name(),
    }
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} {what} failed:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn named_cases_have_their_outcome() {
    let mut failures = Vec::new();
    for (name, frame, outcome) in oracle::named_cases() {
        let got = parse_frame(&frame[..]);
        let as_named = match (&got, outcome) {
            (Ok(_), Outcome::Record) => true,
            (Err(counter), Outcome::Counter(want)) => *counter == want,
            _ => false,
        };
        if !as_named {
            failures.push(format!(
                "{name}: expected {outcome:?}, parser gave {}",
                oracle::describe(&got)
            ));
        }
        if let Err(e) = differential(&frame) {
            failures.push(format!("{name}: {e}\n  {}", hex(&frame)));
        }
    }
    assert_no_failures("named cases", &failures);
}

/// Spot checks that the builders put on the wire what their names say, independently of both parsers agreeing.
#[test]
fn named_frames_carry_what_they_say() {
    let tcp = |frame: Vec<u8>| match oracle::expected(&frame) {
        Expected::Tcp(tcp) => tcp,
        other => panic!("not a TCP record: {other:?}"),
    };
    let syn = tcp(oracle::syn_with_all_options());
    assert_eq!(syn.options.mss, Some(1460));
    assert_eq!(syn.options.wscale, Some(7));
    assert!(syn.options.sack_perm);
    assert_eq!(syn.options.timestamps, Some((111, 0)));
    assert_eq!(syn.options.kinds, [2, 4, 8, 3]);
    assert_eq!((syn.header_len, syn.payload_len), (40, 0));

    assert_eq!(tcp(oracle::ack_with_sack(4)).options.sack.map(|s| s.len()), Some(4));
    assert_eq!(tcp(oracle::data_segment(1400)).payload_len, 1400);
    assert_eq!(tcp(oracle::double_vlan_tcp()).link.vlan_ids, [200, 100]);
    assert_eq!(tcp(oracle::first_fragment()).payload_len, 64);

    let ext = tcp(oracle::ipv6_tcp_with_ext_headers());
    assert_eq!((ext.ip_version, ext.payload_len), (6, 5));

    let unknown = tcp(oracle::unknown_option());
    assert!(unknown.options.unknown);
    assert_eq!(unknown.options.kinds, [253, 2]);
    assert_eq!(unknown.options.mss, Some(1460));

    match oracle::expected(&oracle::gratuitous_arp()) {
        Expected::Arp(arp) => assert_eq!((arp.operation, arp.sender_ip), (1, arp.target_ip)),
        other => panic!("not an ARP record: {other:?}"),
    }
}

#[test]
fn every_truncation_of_a_valid_frame_is_truncated() {
    let mut failures = Vec::new();
    for (name, frame, outcome) in oracle::named_cases() {
        if outcome != Outcome::Record {
            continue;
        }
        for n in 0..frame.len() {
            let cut = &frame[..n];
            match differential(cut) {
                Err(e) => failures.push(format!("{name} cut to {n}: {e}")),
                Ok((Err(Counter::Truncated), _)) => {}
                // Cutting only trailing padding leaves the IP packet whole: the record was checked above.
                Ok((Ok(_), _)) if frame[n..].iter().all(|&b| b == 0) => {}
                Ok((got, _)) => failures.push(format!("{name} cut to {n}: parser gave {}", oracle::describe(&got))),
            }
        }
    }
    assert_no_failures("truncations", &failures);
}

/// [`SEED`], or the seed in `PARSE_ORACLE_SEED`.
fn seed() -> u64 {
    let Ok(text) = std::env::var("PARSE_ORACLE_SEED") else {
        return SEED;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("PARSE_ORACLE_SEED={text}: {e}"))
}

#[test]
fn random_frames_agree_with_etherparse() {
    let seed = seed();
    let frames = oracle::random_frames(seed, RANDOM_FRAMES);
    assert_eq!(
        frames[..100],
        oracle::random_frames(seed, 100)[..],
        "the generator is reproducible"
    );

    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rules: BTreeMap<Rule, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        match differential(frame) {
            Ok((got, verdict)) => {
                *outcomes.entry(outcome_name(&got)).or_default() += 1;
                for rule in verdict.rules {
                    *rules.entry(rule).or_default() += 1;
                }
            }
            Err(e) => failures.push(format!("frame {i}: {e}\n  {}", hex(frame))),
        }
    }
    let summary: Vec<String> = outcomes.iter().map(|(name, n)| format!("{name} {n}")).collect();
    let applied: Vec<String> = rules.iter().map(|(rule, n)| format!("{rule:?} {n}")).collect();
    println!(
        "{RANDOM_FRAMES} random frames (seed {seed:#x}): {}; rules applied: {}",
        summary.join(", "),
        applied.join(", ")
    );
    assert_no_failures(&format!("of {RANDOM_FRAMES} random frames (seed {seed:#x})"), &failures);

    // The mix must keep reaching every outcome and every rule, or the run proves less than it claims.
    let reachable = Counter::ALL.iter().filter(|c| {
        c.is_malformed()
            || matches!(
                c,
                Counter::NotTcpOrArp | Counter::ArpUnsupported | Counter::NonFirstFragment
            )
    });
    for name in ["tcp_record", "arp_record"]
        .into_iter()
        .chain(reachable.map(|c| c.name()))
    {
        assert!(
            outcomes.get(name).copied().unwrap_or(0) >= 5,
            "random frames rarely reach {name}: {outcomes:?}"
        );
    }
    assert!(
        outcomes["tcp_record"] >= RANDOM_FRAMES / 4,
        "too few valid TCP frames: {outcomes:?}"
    );
    for rule in Rule::ALL {
        assert!(
            rules.contains_key(&rule),
            "random frames never apply {rule:?}: {rules:?}"
        );
    }
}
