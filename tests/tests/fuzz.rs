//! Fuzzing without root: the shared frame parser on arbitrary bytes and on mutations of the oracle's random
//! frames (never a panic, and the same verdict as etherparse under observer's rules), and the agent's record
//! path on arbitrary ring entries (decoded, rendered as text and JSON, written to pcapng: never a panic).

use std::{mem::offset_of, path::Path};

use observer::{
    model::analyzer::Analyzer,
    model::events::{self, Event},
    view::{
        lines::Lines,
        pcapng::PcapngWriter,
        render::{Clock, Renderer},
        sink::Sink,
    },
};
use observer_common::{
    parse::parse_frame,
    record::{HDR_SNAP, KIND_ARP, KIND_OFFSET, KIND_TCP, RecordHeader},
};
use proptest::{prelude::*, sample::Index};
use tests::oracle;

/// Byte offset of the header's flags (the `--write` form's mark).
const FLAGS_OFFSET: usize = offset_of!(RecordHeader, flags);

/// A frame of the oracle's generator (valid and broken TCP, ARP, VLAN stacks, IPv6 extension chains), with up
/// to four bytes overwritten and perhaps cut short.
fn mutated_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u64>(),
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        prop::option::of(any::<Index>()),
    )
        .prop_map(|(seed, writes, cut)| {
            let mut frame = oracle::random_frames(seed, 1).remove(0);
            if !frame.is_empty() {
                for (at, byte) in writes {
                    let i = at.index(frame.len());
                    frame[i] = byte;
                }
            }
            if let Some(at) = cut {
                frame.truncate(at.index(frame.len() + 1));
            }
            frame
        })
}

/// The parser's verdict on `frame` is etherparse's under observer's rules.
fn agrees_with_etherparse(frame: &[u8]) -> Result<(), TestCaseError> {
    let got = parse_frame(frame);
    oracle::check(&got, &oracle::expected(frame)).map_err(|e| TestCaseError::fail(format!("{e}: {frame:02x?}")))
}

/// Ring entries that decode as packet records: arbitrary bytes of any of the four packet forms.
fn packet_entries() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let forms = [(KIND_TCP, false), (KIND_TCP, true), (KIND_ARP, false), (KIND_ARP, true)];
    let entry = (
        prop::sample::select(forms.to_vec()),
        prop::collection::vec(any::<u8>(), 1024),
    )
        .prop_filter_map("decodes", |((kind, snap), mut bytes)| {
            bytes[KIND_OFFSET] = kind;
            bytes[FLAGS_OFFSET] = if snap { HDR_SNAP } else { 0 };
            (64..=bytes.len()).find_map(|len| events::decode(&bytes[..len]).ok().map(|_| bytes[..len].to_vec()))
        });
    prop::collection::vec(entry, 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5_000))]

    /// Arbitrary bytes: the parser answers (a record or a counter) and etherparse agrees.
    #[test]
    fn the_parser_takes_arbitrary_bytes(frame in prop::collection::vec(any::<u8>(), 0..300)) {
        agrees_with_etherparse(&frame)?;
    }

    /// Mutated and cut frames of the oracle's generator: the parser answers and etherparse agrees.
    #[test]
    fn the_parser_takes_mutated_frames(frame in mutated_frames()) {
        agrees_with_etherparse(&frame)?;
    }

    /// Arbitrary packet records, one after another through one analyzer (its flow and ARP state) into the views:
    /// text and JSON lines and a pcapng file. Every line renders, every JSON line parses, every packet writes.
    #[test]
    fn arbitrary_records_render_and_write(entries in packet_entries()) {
        let mut analyzer = Analyzer::default();
        let mut text = Lines::new(Renderer::new("eth0", 1, false), Vec::new());
        let mut json = Lines::new(Renderer::new("eth0", 1, true), Vec::new());
        let mut pcap = PcapngWriter::new(Vec::new(), Path::new("fuzz.pcapng"), Clock::utc_with_offset(0))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for entry in &entries {
            let event = events::decode(entry).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let bytes = event.snap().map_or(&[][..], |s| s.bytes());
            let item = match &event {
                Event::Tcp(rec, _) => analyzer.segment(rec, None, bytes),
                Event::Arp(rec, _) => analyzer.arp(rec, bytes),
                Event::Sock(_) => unreachable!("only packet kinds are generated"),
            };
            text.item(&item).map_err(|e| TestCaseError::fail(e.to_string()))?;
            json.item(&item).map_err(|e| TestCaseError::fail(e.to_string()))?;
            pcap.item(&item).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let (text, json) = (text.into_inner(), json.into_inner());
        let (text, json) = (String::from_utf8_lossy(&text), String::from_utf8_lossy(&json));
        // A segment's line may be followed by its analysis lines: never fewer lines than records.
        prop_assert!(text.lines().count() >= entries.len());
        prop_assert!(text.lines().all(|l| !l.is_empty()));
        prop_assert!(json.lines().count() >= entries.len());
        for json_line in json.lines() {
            prop_assert!(serde_json::from_str::<serde_json::Value>(json_line).is_ok(), "{}", json_line);
        }
        pcap.flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}
