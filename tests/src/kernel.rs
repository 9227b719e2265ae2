//! Runs frames through the real kernel programs with BPF_PROG_TEST_RUN and reads back what they did.

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun, TestRunOptions},
};
use observer::{
    model::events::{self, Event},
    sys::capture::{Capture, Counters, program},
};
use observer_common::{
    Config, Counter,
    parse::Parsed,
    record::{HDR_SNAP, SNAP_LEN},
};

/// Which program a frame goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `tc_ingress`.
    TcIngress,
    /// `tc_egress`.
    TcEgress,
    /// `xdp_ingress`.
    Xdp,
    /// `tc_empty`, the benchmark baseline.
    TcEmpty,
    /// `tc_floor`, the benchmark floor: a record reserved and submitted with no parsing.
    TcFloor,
}

/// The floor program's name (observer's own list holds only the programs it attaches).
pub const TC_FLOOR: &str = "tc_floor";

/// Shortest frame BPF_PROG_TEST_RUN accepts (an Ethernet header); shorter ones are covered by the host tests
/// of the same parser.
pub const MIN_FRAME: usize = 14;

/// Whether BPF_PROG_TEST_RUN accepts `frame` for `program`. Measured on this kernel: a TC test run gives
/// EINVAL for an IPv4 frame shorter than 14 + 20 bytes and an IPv6 frame shorter than 14 + 40 (it pulls the
/// IP header into the test skb); XDP takes any frame of 14 bytes or more.
pub fn runnable(program: Program, frame: &[u8]) -> bool {
    let min = match (program, frame.get(12..14)) {
        (Program::Xdp, _) => MIN_FRAME,
        (_, Some([0x08, 0x00])) => 14 + 20,
        (_, Some([0x86, 0xdd])) => 14 + 40,
        _ => MIN_FRAME,
    };
    frame.len() >= min
}

/// TC verdict "next program / default action" (TC_ACT_UNSPEC, -1).
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
/// XDP verdict "pass to the stack".
pub const XDP_PASS: u32 = 2;

/// The loaded programs with their ring buffer taken for reading.
pub struct Kernel {
    /// The loaded object.
    pub capture: Capture,
    ring: RingBuf<MapData>,
}

/// What one run of a program did.
#[derive(Debug)]
pub struct Run {
    /// The program's return value.
    pub verdict: u32,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
    /// Records it submitted.
    pub events: Vec<Event>,
    /// Their sizes in bytes as read from the ring.
    pub sizes: Vec<usize>,
    /// Counters that rose, with by how much.
    pub rose: Vec<(Counter, u64)>,
    /// The kernel's average time per repetition.
    pub duration: std::time::Duration,
}

impl Kernel {
    /// Loads the programs with `config` and verifies every one of them.
    pub fn load(config: &Config) -> anyhow::Result<Kernel> {
        let mut capture = Capture::load(config, observer::sys::capture::RingSizes::default(), false)?;
        for name in [program::TC_INGRESS, program::TC_EGRESS, program::TC_EMPTY, TC_FLOOR] {
            capture.classifier(name)?;
        }
        capture.xdp()?;
        let ring = capture.take_events()?;
        Ok(Kernel { capture, ring })
    }

    /// Runs `frame` through `program` `repeat` times and collects records and counter changes.
    pub fn run(&mut self, program: Program, frame: &[u8], repeat: u32) -> anyhow::Result<Run> {
        let before = self.capture.counters()?;
        let mut data_out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match program {
            Program::TcIngress => self.capture.classifier(program::TC_INGRESS)?.test_run(opts),
            Program::TcEgress => self.capture.classifier(program::TC_EGRESS)?.test_run(opts),
            Program::TcEmpty => self.capture.classifier(program::TC_EMPTY)?.test_run(opts),
            Program::TcFloor => self.capture.classifier(TC_FLOOR)?.test_run(opts),
            Program::Xdp => self.capture.xdp()?.test_run(opts),
        }?;
        data_out.truncate(result.data_size_out as usize);
        let after = self.capture.counters()?;
        let (mut events, mut sizes) = (Vec::new(), Vec::new());
        while let Some(item) = self.ring.next() {
            sizes.push(item.len());
            events.push(events::decode(&item)?);
        }
        Ok(Run {
            verdict: result.return_value,
            data_out,
            events,
            sizes,
            rose: rose(&before, &after),
            duration: result.duration,
        })
    }
}

fn rose(before: &Counters, after: &Counters) -> Vec<(Counter, u64)> {
    let d = after.since(before);
    Counter::ALL
        .iter()
        .filter(|c| d.get(**c) > 0)
        .map(|c| (*c, d.get(*c)))
        .collect()
}

impl Run {
    /// The run's outcome in the parser's terms: the record (with the fields only the kernel sets cleared),
    /// or the one counter that took the frame. Fails when the counters and records disagree.
    pub fn outcome(&self, seen: Counter) -> Result<Result<Parsed, Counter>, String> {
        let others: Vec<(Counter, u64)> = self.rose.iter().copied().filter(|(c, _)| *c != seen).collect();
        match (self.events.as_slice(), others.as_slice()) {
            ([event], [(Counter::Emitted, 1)]) => kernel_fields_cleared(event)
                .map(Ok)
                .ok_or_else(|| format!("a packet program emitted a non-packet record {event:?}")),
            ([], [(counter, 1)]) if *counter != Counter::Emitted => Ok(Err(*counter)),
            _ => Err(format!("records {:?} with counters {:?}", self.events.len(), self.rose)),
        }
    }
}

/// How many bytes the `--write` form of `frame`'s record must carry: through the end of the TCP header, or the
/// whole frame for ARP, at most [`SNAP_LEN`]. The IP header's place and length come from etherparse; `None`
/// when it finds no IP header in a TCP frame.
pub fn expected_snap_len(frame: &[u8], parsed: &Parsed) -> Option<usize> {
    let end = match parsed {
        Parsed::Arp(_) => frame.len(),
        Parsed::Tcp(rec) => {
            // The IP packet's end by its own length field, less the payload: the payload length is the one the
            // oracle checked field by field, so this needs no walk of extension headers.
            let sliced = etherparse::LaxSlicedPacket::from_ethernet(frame).ok()?;
            let (start, ip_len) = match sliced.net? {
                etherparse::LaxNetSlice::Ipv4(ip) => {
                    (ip.header().slice().as_ptr(), usize::from(ip.header().total_len()))
                }
                etherparse::LaxNetSlice::Ipv6(ip) => (
                    ip.header().slice().as_ptr(),
                    40 + usize::from(ip.header().payload_length()),
                ),
                etherparse::LaxNetSlice::Arp(_) => return None,
            };
            (start as usize - frame.as_ptr() as usize + ip_len).checked_sub(usize::from(rec.payload_len))?
        }
    };
    Some(end.min(SNAP_LEN))
}

impl Run {
    /// The header bytes of the run's one packet record, if it carries them.
    pub fn snap(&self) -> Option<&[u8]> {
        match self.events.as_slice() {
            [event] => event.snap().map(|s| s.bytes()),
            _ => None,
        }
    }
}

/// The record as the host parser would produce it: time, hook, direction, ifindex and the header-bytes flag
/// cleared (`None` for a socket event, which no parser produces).
fn kernel_fields_cleared(event: &Event) -> Option<Parsed> {
    fn clear(h: &mut observer_common::RecordHeader) {
        h.ts_ns = 0;
        h.hook = 0;
        h.direction = 0;
        h.ifindex = 0;
        h.flags &= !HDR_SNAP;
    }
    match *event {
        Event::Tcp(mut r, _) => {
            clear(&mut r.header);
            Some(Parsed::Tcp(r))
        }
        Event::Arp(mut r, _) => {
            clear(&mut r.header);
            Some(Parsed::Arp(r))
        }
        Event::Sock(_) => None,
    }
}
