//! Wireshark's TCP expert flags, with the rules of `packet-tcp.c` in Wireshark 4.0
//! (`tcp_analyze_sequence_number`, printed by `tcp_print_sequence_number_analysis`).
//!
//! The state per direction is Wireshark's `tcp_analyze_seq_flow_info_t` fields that the flags read
//! (`nextseq`, `maxseqtobeacked`, `lastack`, `dupacknum`, `lastnondupack`, `window`, `lastsegmentflags`):
//! a fixed-size struct, no list of segments. Numbers are absolute, compared with Wireshark's wrapping
//! `GT_SEQ`/`LT_SEQ`. Deliberate differences: Wireshark stops adding segments to its unacked list after
//! 1000 unacked ones (`TCP_MAX_UNACKED_SEGMENTS`), after which a FIN or SYN no longer counts one sequence
//! number in `nextseq`; this state always counts it.

/// One expert flag. The order of the variants is the order tshark prints them in the Info column: each
/// `tcp_sequence_number_analysis_print_*` helper prepends its text (`col_prepend_fence_fstr`), so the
/// flag printed last comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpertFlag {
    /// A zero-window ACK repeating the last ACK after a zero window probe.
    ZeroWindowProbeAck,
    /// A window of 0 on a segment without SYN, FIN or RST.
    ZeroWindow,
    /// One byte at the next expected sequence number while the peer's window is 0.
    ZeroWindowProbe,
    /// A pure ACK repeating the previous ACK, window and sequence number.
    DupAck,
    /// A pure ACK repeating the previous one right after a keep-alive from the peer.
    KeepAliveAck,
    /// 0 or 1 byte at the next expected sequence number − 1.
    KeepAlive,
    /// Data reaching exactly the edge of the window the peer advertised.
    WindowFull,
    /// A pure ACK repeating the previous ACK with a new, non-zero window.
    WindowUpdate,
    /// An ACK for data beyond anything seen in the other direction.
    AckedUnseen,
    /// Data beyond the next expected sequence number: a gap in the capture.
    PreviousSegmentNotCaptured,
    /// Old data within the out-of-order threshold (iRTT, or 3 ms before the handshake completed).
    OutOfOrder,
    /// Data the peer had already acknowledged.
    SpuriousRetransmission,
    /// Old data at the peer's ACK after two or more duplicate ACKs, within 20 ms of the last one.
    FastRetransmission,
    /// Old data that is none of the above.
    Retransmission,
    /// A SYN or SYN-ACK with a new initial sequence number on a tracked tuple.
    PortNumbersReused,
}

impl ExpertFlag {
    /// Every flag, in Info order.
    pub const ALL: [ExpertFlag; 15] = [
        ExpertFlag::ZeroWindowProbeAck,
        ExpertFlag::ZeroWindow,
        ExpertFlag::ZeroWindowProbe,
        ExpertFlag::DupAck,
        ExpertFlag::KeepAliveAck,
        ExpertFlag::KeepAlive,
        ExpertFlag::WindowFull,
        ExpertFlag::WindowUpdate,
        ExpertFlag::AckedUnseen,
        ExpertFlag::PreviousSegmentNotCaptured,
        ExpertFlag::OutOfOrder,
        ExpertFlag::SpuriousRetransmission,
        ExpertFlag::FastRetransmission,
        ExpertFlag::Retransmission,
        ExpertFlag::PortNumbersReused,
    ];

    fn bit(self) -> u16 {
        1 << self as u16
    }

    /// tshark's bracketed text without the brackets; the dup ACK's `<frame>#<n>` is added by [`Expert::texts`].
    pub fn text(self) -> &'static str {
        match self {
            ExpertFlag::ZeroWindowProbeAck => "TCP ZeroWindowProbeAck",
            ExpertFlag::ZeroWindow => "TCP ZeroWindow",
            ExpertFlag::ZeroWindowProbe => "TCP ZeroWindowProbe",
            ExpertFlag::DupAck => "TCP Dup ACK",
            ExpertFlag::KeepAliveAck => "TCP Keep-Alive ACK",
            ExpertFlag::KeepAlive => "TCP Keep-Alive",
            ExpertFlag::WindowFull => "TCP Window Full",
            ExpertFlag::WindowUpdate => "TCP Window Update",
            ExpertFlag::AckedUnseen => "TCP ACKed unseen segment",
            ExpertFlag::PreviousSegmentNotCaptured => "TCP Previous segment not captured",
            ExpertFlag::OutOfOrder => "TCP Out-Of-Order",
            ExpertFlag::SpuriousRetransmission => "TCP Spurious Retransmission",
            ExpertFlag::FastRetransmission => "TCP Fast Retransmission",
            ExpertFlag::Retransmission => "TCP Retransmission",
            ExpertFlag::PortNumbersReused => "TCP Port numbers reused",
        }
    }

    /// Whether the flag marks data sent again (retransmission, fast or spurious).
    pub fn is_retransmission(self) -> bool {
        matches!(
            self,
            ExpertFlag::Retransmission | ExpertFlag::FastRetransmission | ExpertFlag::SpuriousRetransmission
        )
    }
}

/// The expert flags of one segment, with the dup ACK's numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expert {
    bits: u16,
    /// Frame of the last ACK that changed the ack number (Wireshark's `lastnondupack`), for a dup ACK.
    pub dupack_frame: u64,
    /// How many duplicates of that ACK so far, for a dup ACK.
    pub dupack_num: u32,
}

impl Expert {
    /// Whether `flag` is set.
    pub fn has(&self, flag: ExpertFlag) -> bool {
        self.bits & flag.bit() != 0
    }

    /// Sets `flag`.
    pub fn set(&mut self, flag: ExpertFlag) {
        self.bits |= flag.bit();
    }

    /// Whether no flag is set.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The set flags in Info order.
    pub fn flags(&self) -> impl Iterator<Item = ExpertFlag> + '_ {
        ExpertFlag::ALL.into_iter().filter(|f| self.has(*f))
    }

    /// tshark's texts without brackets in Info order, e.g. `TCP Dup ACK 5#1`.
    pub fn texts(&self) -> Vec<String> {
        self.texts_shown().map(|t| t.to_string()).collect()
    }

    /// [`Expert::texts`] as values that print themselves, without allocating.
    pub fn texts_shown(&self) -> impl Iterator<Item = ExpertText> + '_ {
        self.flags().map(|flag| ExpertText { flag, expert: *self })
    }

    /// tshark's Info prefix: every text in brackets, each followed by a space.
    pub fn prefix(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_prefix(&mut s);
        s
    }

    /// Writes [`Expert::prefix`] into `out` without allocating.
    pub fn write_prefix(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        for t in self.texts_shown() {
            write!(out, "[{t}] ")?;
        }
        Ok(())
    }
}

/// One expert text, e.g. `TCP Dup ACK 5#1`.
#[derive(Clone, Copy, Debug)]
pub struct ExpertText {
    flag: ExpertFlag,
    expert: Expert,
}

impl std::fmt::Display for ExpertText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.flag {
            ExpertFlag::DupAck => write!(
                f,
                "{} {}#{}",
                self.flag.text(),
                self.expert.dupack_frame,
                self.expert.dupack_num
            ),
            flag => f.write_str(flag.text()),
        }
    }
}

const FIN: u8 = observer_common::record::TCP_FIN;
const SYN: u8 = observer_common::record::TCP_SYN;
const RST: u8 = observer_common::record::TCP_RST;
const ACK: u8 = observer_common::record::TCP_ACK;
/// Fast retransmission: within this time of the last duplicate ACK (packet-tcp.c: 20 ms).
const FAST_RETRANSMISSION_NS: u64 = 20_000_000;
/// Out-of-order threshold before the iRTT is known (packet-tcp.c: 3 ms).
const DEFAULT_OOO_NS: u64 = 3_000_000;

fn gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// Wireshark's analysis state for one direction (0 means "not seen yet" as in Wireshark).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqState {
    /// Highest sequence number sent + 1.
    pub(crate) nextseq: u32,
    nextseq_ns: u64,
    maxseqtobeacked: u32,
    /// The ack field of this direction's last segment.
    pub(crate) lastack: u32,
    lastack_ns: u64,
    lastnondupack: u64,
    dupacknum: u32,
    /// Raw window of this direction's last segment.
    window: u32,
    /// Whether this direction's last segment was a SYN (its window is never scaled).
    window_from_syn: bool,
    lastflags: u16,
}

impl Default for SeqState {
    fn default() -> Self {
        SeqState {
            nextseq: 0,
            nextseq_ns: 0,
            maxseqtobeacked: 0,
            lastack: 0,
            lastack_ns: 0,
            lastnondupack: 0,
            dupacknum: 0,
            window: u32::MAX,
            window_from_syn: false,
            lastflags: 0,
        }
    }
}

/// The fields of one segment the rules read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub(crate) seq: u32,
    /// The raw ack field, also without the ACK flag (as Wireshark passes it).
    pub(crate) ack: u32,
    pub(crate) seglen: u32,
    pub(crate) flags: u8,
    /// Raw window field.
    pub(crate) window: u32,
    pub(crate) ts_ns: u64,
    pub(crate) frame: u64,
}

/// What the rules know about the connection beyond the two directions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context {
    /// The receiver's window shift, `None` while unknown (Wireshark's `win_scale == -1`); 0 without scaling.
    pub(crate) rev_shift: Option<u8>,
    /// Wireshark's `ts_first_rtt` (iRTT), once known.
    pub(crate) first_rtt_ns: Option<u64>,
}

/// Runs Wireshark's rules for one segment, updates both directions' state and returns the flags.
pub(crate) fn analyze(fwd: &mut SeqState, rev: &mut SeqState, s: &Segment, ctx: &Context) -> Expert {
    let mut e = Expert::default();
    let ctl = s.flags & (SYN | FIN | RST) != 0;
    let repeats_ack = s.seglen == 0 && s.seq == fwd.nextseq && s.ack == fwd.lastack && !ctl;
    'fwd: {
        if s.seglen == 1 && s.seq == fwd.nextseq && rev.window == 0 {
            e.set(ExpertFlag::ZeroWindowProbe);
            break 'fwd;
        }
        if s.window == 0 && !ctl {
            e.set(ExpertFlag::ZeroWindow);
        }
        if fwd.nextseq != 0 && gt(s.seq, fwd.nextseq) && s.flags & RST == 0 {
            e.set(ExpertFlag::PreviousSegmentNotCaptured);
        }
        if s.seglen <= 1 && s.seq == fwd.nextseq.wrapping_sub(1) && !ctl {
            e.set(ExpertFlag::KeepAlive);
        }
        if repeats_ack && s.window != 0 && s.window != fwd.window {
            e.set(ExpertFlag::WindowUpdate);
        }
        if let Some(shift) = ctx.rev_shift {
            let shift = if rev.window_from_syn { 0 } else { shift };
            let edge = rev.lastack.wrapping_add(rev.window.wrapping_shl(u32::from(shift)));
            if s.seglen > 0 && s.seq.wrapping_add(s.seglen) == edge && !ctl {
                e.set(ExpertFlag::WindowFull);
            }
        }
        if repeats_ack && s.window != 0 && s.window == fwd.window && rev.lastflags & ExpertFlag::KeepAlive.bit() != 0 {
            e.set(ExpertFlag::KeepAliveAck);
            break 'fwd;
        }
        if repeats_ack && s.window == 0 && fwd.window == 0 && rev.lastflags & ExpertFlag::ZeroWindowProbe.bit() != 0 {
            e.set(ExpertFlag::ZeroWindowProbeAck);
            break 'fwd;
        }
        if repeats_ack && s.window != 0 && s.window == fwd.window {
            fwd.dupacknum += 1;
            e.set(ExpertFlag::DupAck);
            e.dupack_num = fwd.dupacknum;
            e.dupack_frame = fwd.lastnondupack;
        }
    }
    if s.ack != fwd.lastack {
        fwd.lastnondupack = s.frame;
        fwd.dupacknum = 0;
    }
    if rev.maxseqtobeacked != 0 && gt(s.ack, rev.maxseqtobeacked) && s.flags & ACK != 0 {
        e.set(ExpertFlag::AckedUnseen);
        rev.maxseqtobeacked = rev.nextseq;
    }
    if (s.seglen > 0 || s.flags & (SYN | FIN) != 0) && !e.has(ExpertFlag::KeepAlive) {
        retransmission_kind(fwd, rev, s, ctx, &mut e);
    }

    let syn_fin = u32::from(s.flags & (SYN | FIN) != 0);
    let nextseq = s.seq.wrapping_add(s.seglen).wrapping_add(syn_fin);
    let probe = e.has(ExpertFlag::ZeroWindowProbe);
    if (gt(nextseq, fwd.nextseq) || fwd.nextseq == 0) && !probe {
        fwd.nextseq = nextseq;
        fwd.nextseq_ns = s.ts_ns;
    }
    if (s.seq == fwd.maxseqtobeacked || fwd.maxseqtobeacked == 0) && !probe {
        fwd.maxseqtobeacked = fwd.nextseq;
    }
    fwd.window = s.window;
    fwd.window_from_syn = s.flags & SYN != 0;
    fwd.lastack = s.ack;
    fwd.lastack_ns = s.ts_ns;
    fwd.lastflags = e.bits;
    e
}

/// Spurious, fast, out-of-order or plain retransmission of a segment carrying data, SYN or FIN.
fn retransmission_kind(fwd: &SeqState, rev: &SeqState, s: &Segment, ctx: &Context, e: &mut Expert) {
    let mut not_advanced = fwd.nextseq != 0 && lt(s.seq, fwd.nextseq);
    if s.seglen > 1 && fwd.nextseq.wrapping_sub(1) == s.seq {
        not_advanced = false;
    }
    if s.seglen > 0 && rev.lastack != 0 && le(s.seq.wrapping_add(s.seglen), rev.lastack) {
        e.set(ExpertFlag::SpuriousRetransmission);
        return;
    }
    let since_ack = s.ts_ns.wrapping_sub(rev.lastack_ns);
    if not_advanced && rev.dupacknum >= 2 && rev.lastack == s.seq && since_ack < FAST_RETRANSMISSION_NS {
        e.set(ExpertFlag::FastRetransmission);
        return;
    }
    let since_next = s.ts_ns.wrapping_sub(fwd.nextseq_ns);
    let threshold = ctx.first_rtt_ns.unwrap_or(DEFAULT_OOO_NS);
    let syn_fin = u32::from(s.flags & (SYN | FIN) != 0);
    let ends_at_next = fwd.nextseq == s.seq.wrapping_add(s.seglen).wrapping_add(syn_fin);
    if not_advanced && since_next < threshold && !ends_at_next {
        e.set(ExpertFlag::OutOfOrder);
        return;
    }
    if not_advanced {
        e.set(ExpertFlag::Retransmission);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_order_is_reverse_print_order() {
        let mut e = Expert::default();
        e.set(ExpertFlag::ZeroWindow);
        e.set(ExpertFlag::ZeroWindowProbeAck);
        assert_eq!(e.prefix(), "[TCP ZeroWindowProbeAck] [TCP ZeroWindow] ");
        let mut e = Expert {
            dupack_frame: 6,
            dupack_num: 2,
            ..Expert::default()
        };
        e.set(ExpertFlag::DupAck);
        e.set(ExpertFlag::PreviousSegmentNotCaptured);
        assert_eq!(e.texts(), ["TCP Dup ACK 6#2", "TCP Previous segment not captured"]);
    }

    #[test]
    fn sequence_comparisons_wrap() {
        assert!(gt(5, u32::MAX - 5));
        assert!(lt(u32::MAX - 5, 5));
        assert!(le(7, 7));
    }
}
