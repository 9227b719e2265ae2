//! Designed degradation: while the packet ring holds more than `Config::fold_above` bytes the agent has not read,
//! data segments are not recorded one by one but folded into per-flow counters (`FOLDED`), which the agent
//! prints as one line per flow per interval. SYN, FIN and RST segments, the pure ACKs of flows with nothing
//! folded (handshake ACKs among them) or that a FIN or RST is closing (the ACKs answering a FIN) and ARP are
//! still recorded; socket events have a ring of their own.

use crate::record::{TCP_FIN, TCP_RST, TCP_SYN, TcpRecord};

/// Name of the `PerCpuHashMap<FlowKey, FoldedFlow>` of folded segments.
pub const FOLDED_MAP: &str = "FOLDED";
/// Most flows with folded segments at once; a segment of a new flow beyond it is recorded as usual.
pub const FOLDED_CAPACITY: u32 = 8192;
/// Most folded flows remembered as closing (a FIN or RST seen); the least recent is forgotten beyond it.
pub const CLOSING_CAPACITY: u32 = 8192;

/// What the kernel knows of a segment's flow when it decides on folding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFold {
    /// The flow has folded segments.
    pub folded: bool,
    /// A FIN or RST of the flow was seen while it had folded segments.
    pub closing: bool,
}

/// [`FoldedFlow::sent`]: the lower endpoint's data was folded on this CPU.
const SENT_LO: u32 = 1;
/// [`FoldedFlow::sent`]: the higher endpoint's data was folded on this CPU.
const SENT_HI: u32 = 2;

/// What was folded of one flow on one CPU since its entry was made.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldedFlow {
    /// Segments folded.
    pub packets: u64,
    /// Their TCP payload bytes.
    pub bytes: u64,
    /// Boot-time ns of the first (0 while this CPU folded none).
    pub first_ns: u64,
    /// Boot-time ns of the last.
    pub last_ns: u64,
    /// Folded data segments that started below the highest sequence number the same endpoint's folded data had
    /// reached on this CPU: Wireshark's retransmissions, as far as one CPU's share of the flow tells.
    pub retransmits: u64,
    /// The sequence number after the lower endpoint's highest folded data (valid with [`SENT_LO`]).
    pub next_lo: u32,
    /// The same for the higher endpoint (valid with [`SENT_HI`]).
    pub next_hi: u32,
    /// Which endpoints' data this CPU folded.
    pub sent: u32,
    /// Keeps the struct free of padding (it is `aya::Pod`).
    pub _pad: u32,
}

/// Whether a segment may be folded: never a SYN, FIN or RST; a segment with payload; a pure ACK only when its
/// flow has segments folded already and is not closing, so that a handshake's ACK and the ACK answering a FIN
/// are always recorded.
#[inline(always)]
pub fn foldable(rec: &TcpRecord, flow: FlowFold) -> bool {
    rec.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && (rec.payload_len > 0 || (flow.folded && !flow.closing))
}

/// Whether a segment that is not folded marks its folded flow as closing.
#[inline(always)]
pub fn closes(rec: &TcpRecord) -> bool {
    rec.flags & (TCP_FIN | TCP_RST) != 0
}

/// Whether sequence number `a` lies after `b` (RFC 793's modular comparison).
#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl FoldedFlow {
    /// This CPU's entry after one more segment at `now`; `from_lo` says its source is the flow's lower endpoint.
    #[inline(always)]
    pub fn add(&mut self, rec: &TcpRecord, from_lo: bool, now: u64) {
        self.packets += 1;
        self.bytes += u64::from(rec.payload_len);
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        if rec.payload_len == 0 {
            return;
        }
        let end = rec.seq.wrapping_add(u32::from(rec.payload_len));
        let (next, bit) = if from_lo {
            (&mut self.next_lo, SENT_LO)
        } else {
            (&mut self.next_hi, SENT_HI)
        };
        if self.sent & bit != 0 && seq_after(*next, rec.seq) {
            self.retransmits += 1;
            if seq_after(end, *next) {
                *next = end;
            }
        } else {
            *next = end;
            self.sent |= bit;
        }
    }
}

/// The entry of a flow summed over CPUs: counts added, the earliest first time and the latest last (the
/// per-CPU sequence marks stay behind).
pub fn sum(per_cpu: impl IntoIterator<Item = FoldedFlow>) -> FoldedFlow {
    per_cpu.into_iter().fold(FoldedFlow::default(), |mut acc, v| {
        acc.packets += v.packets;
        acc.bytes += v.bytes;
        acc.retransmits += v.retransmits;
        if v.first_ns != 0 && (acc.first_ns == 0 || v.first_ns < acc.first_ns) {
            acc.first_ns = v.first_ns;
        }
        acc.last_ns = acc.last_ns.max(v.last_ns);
        acc
    })
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: a plain #[repr(C)] struct of integers without padding.
    unsafe impl aya::Pod for super::FoldedFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TCP_ACK;

    fn seg(flags: u8, payload_len: u16) -> TcpRecord {
        TcpRecord {
            flags,
            payload_len,
            ..TcpRecord::default()
        }
    }

    const FOLDED: FlowFold = FlowFold {
        folded: true,
        closing: false,
    };

    #[test]
    fn control_segments_are_never_folded() {
        for flags in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            assert!(!foldable(&seg(flags, 0), FOLDED), "{flags:#x}");
            assert!(!foldable(&seg(flags, 100), FOLDED), "{flags:#x} with data");
        }
        assert!(closes(&seg(TCP_FIN | TCP_ACK, 0)) && closes(&seg(TCP_RST, 0)));
        assert!(!closes(&seg(TCP_SYN, 0)) && !closes(&seg(TCP_ACK, 10)));
    }

    #[test]
    fn data_is_folded_and_a_pure_ack_only_in_a_folded_flow_not_closing() {
        assert!(foldable(&seg(TCP_ACK, 64), FlowFold::default()));
        assert!(!foldable(&seg(TCP_ACK, 0), FlowFold::default()), "a handshake's ACK");
        assert!(foldable(&seg(TCP_ACK, 0), FOLDED));
        let closing = FlowFold {
            closing: true,
            ..FOLDED
        };
        assert!(!foldable(&seg(TCP_ACK, 0), closing), "the ACK answering a FIN");
        assert!(foldable(&seg(TCP_ACK, 64), closing), "data after a FIN's half-close");
    }

    #[test]
    fn per_cpu_values_sum_with_the_earliest_first_and_latest_last() {
        let flow = |packets, first_ns, last_ns| FoldedFlow {
            packets,
            bytes: packets * 64,
            first_ns,
            last_ns,
            retransmits: packets / 2,
            next_lo: 7,
            sent: SENT_LO,
            ..FoldedFlow::default()
        };
        let s = sum([flow(2, 30, 40), FoldedFlow::default(), flow(1, 10, 20)]);
        assert_eq!(
            s,
            FoldedFlow {
                retransmits: 1,
                next_lo: 0,
                sent: 0,
                ..flow(3, 10, 40)
            }
        );
    }

    fn data(seq: u32, payload_len: u16) -> TcpRecord {
        TcpRecord {
            seq,
            ..seg(TCP_ACK, payload_len)
        }
    }

    #[test]
    fn add_keeps_the_first_and_last_time() {
        let mut f = FoldedFlow::default();
        f.add(&data(1000, 64), true, 10);
        f.add(&seg(TCP_ACK, 0), false, 20);
        assert_eq!(
            (f.packets, f.bytes, f.first_ns, f.last_ns, f.retransmits),
            (2, 64, 10, 20, 0)
        );
    }

    #[test]
    fn data_below_what_the_same_endpoint_sent_counts_as_retransmitted() {
        let mut f = FoldedFlow::default();
        f.add(&data(1000, 100), true, 1);
        f.add(&data(1100, 100), true, 2);
        // The other endpoint's numbers are its own.
        f.add(&data(50, 100), false, 3);
        assert_eq!(f.retransmits, 0);
        // A hole filled, a segment sent again, a partial overlap.
        f.add(&data(1000, 100), true, 4);
        f.add(&data(1100, 100), true, 5);
        f.add(&data(1150, 100), true, 6);
        assert_eq!(f.retransmits, 3);
        // The overlap carried the mark to 1250: the next new data is no retransmission, and a gap is not one.
        f.add(&data(1250, 100), true, 7);
        f.add(&data(2000, 100), true, 8);
        assert_eq!(f.retransmits, 3);
        // Across the wrap of the sequence space.
        let mut w = FoldedFlow::default();
        w.add(&data(u32::MAX - 49, 100), false, 1);
        w.add(&data(50, 100), false, 2);
        w.add(&data(u32::MAX - 49, 100), false, 3);
        assert_eq!(w.retransmits, 1);
    }
}
