//! Control-only mode: which TCP segments to emit on a busy link.
//!
//! Emitted: every SYN, FIN and RST, the ACK that completes a handshake (acknowledging the SYN-ACK) and the ACK
//! that answers a FIN. The last two need memory of the flow, kept in a small LRU map keyed by [`FlowKey`]
//! holding a [`ControlState`]; [`decide`] is the whole policy, so the host tests check what the kernel does.

use crate::mem::as_u128;
use crate::record::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpRecord};

/// Name of the `LruHashMap<FlowKey, ControlState>` map.
pub const CONTROL_FLOWS_MAP: &str = "CONTROL_FLOWS";
/// Capacity of the control-mode flow map.
pub const CONTROL_FLOWS_CAPACITY: u32 = 16384;

/// A connection with its endpoints in canonical order ("lo" is the smaller address, then port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Address of the lower endpoint (IPv4 in the first 4 bytes).
    pub addr_lo: [u8; 16],
    /// Address of the higher endpoint.
    pub addr_hi: [u8; 16],
    /// Port of the lower endpoint.
    pub port_lo: u16,
    /// Port of the higher endpoint.
    pub port_hi: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// What control mode remembers of a flow: the ACK number each side owes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    /// Acknowledgement number the lower endpoint will send to answer a SYN-ACK or FIN (valid if `PENDING_LO`).
    pub expect_from_lo: u32,
    /// Same for the higher endpoint (valid if `PENDING_HI`).
    pub expect_from_hi: u32,
    /// `PENDING_*` bits.
    pub pending: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// `ControlState::pending`: the lower endpoint owes an ACK.
pub const PENDING_LO: u8 = 1;
/// `ControlState::pending`: the higher endpoint owes an ACK.
pub const PENDING_HI: u8 = 2;

/// What to do with the flow's map entry after a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// Leave the map as it is.
    Keep,
    /// Store this state.
    Store(ControlState),
    /// Remove the entry.
    Delete,
}

/// The verdict on one segment in control mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Submit the record.
    pub emit: bool,
    /// Map change.
    pub update: Update,
}

impl FlowKey {
    /// The canonical key of a segment and whether its source is the lower endpoint.
    #[inline(always)]
    pub fn of(r: &TcpRecord) -> (FlowKey, bool) {
        let src_lo = (as_u128(&r.saddr), r.sport) <= (as_u128(&r.daddr), r.dport);
        let (lo, hi) = if src_lo {
            ((r.saddr, r.sport), (r.daddr, r.dport))
        } else {
            ((r.daddr, r.dport), (r.saddr, r.sport))
        };
        let key = FlowKey {
            addr_lo: lo.0,
            addr_hi: hi.0,
            port_lo: lo.1,
            port_hi: hi.1,
            ip_version: r.ip_version,
            _pad: [0; 3],
        };
        (key, src_lo)
    }
}

/// Decides whether a segment is emitted in control mode and how the flow's state changes.
///
/// `from_lo` says the segment's source is the lower endpoint; `state` is the flow's entry, if any.
#[inline(always)]
pub fn decide(r: &TcpRecord, from_lo: bool, state: Option<ControlState>) -> Decision {
    let (mine, theirs) = if from_lo {
        (PENDING_LO, PENDING_HI)
    } else {
        (PENDING_HI, PENDING_LO)
    };
    let flags = r.flags;
    if flags & TCP_RST != 0 {
        return Decision {
            emit: true,
            update: Update::Delete,
        };
    }
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK == 0 {
            // A new connection attempt: forget anything left from an earlier one on these ports.
            return Decision {
                emit: true,
                update: Update::Delete,
            };
        }
        let mut s = ControlState::default();
        s.set_expect(theirs, r.seq.wrapping_add(1));
        return Decision {
            emit: true,
            update: Update::Store(s),
        };
    }
    let mut s = state.unwrap_or_default();
    let answers = flags & TCP_ACK != 0 && s.pending & mine != 0 && s.expect(mine) == r.ack;
    if answers {
        s.pending &= !mine;
    }
    if flags & TCP_FIN != 0 {
        let fin_end = r.seq.wrapping_add(r.payload_len as u32).wrapping_add(1);
        s.set_expect(theirs, fin_end);
        return Decision {
            emit: true,
            update: Update::Store(s),
        };
    }
    if !answers {
        return Decision {
            emit: false,
            update: Update::Keep,
        };
    }
    let update = if s.pending == 0 {
        Update::Delete
    } else {
        Update::Store(s)
    };
    Decision { emit: true, update }
}

impl ControlState {
    #[inline(always)]
    fn expect(&self, side: u8) -> u32 {
        if side == PENDING_LO {
            self.expect_from_lo
        } else {
            self.expect_from_hi
        }
    }

    #[inline(always)]
    fn set_expect(&mut self, side: u8, ack: u32) {
        if side == PENDING_LO {
            self.expect_from_lo = ack;
        } else {
            self.expect_from_hi = ack;
        }
        self.pending |= side;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] structs of integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ControlState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(from_client: bool, flags: u8, seq: u32, ack: u32, len: u16) -> TcpRecord {
        let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (a, b, sport, dport) = if from_client {
            (c, s, 40000, 22)
        } else {
            (s, c, 22, 40000)
        };
        let mut r = TcpRecord {
            ip_version: 4,
            sport,
            dport,
            flags,
            seq,
            ack,
            payload_len: len,
            ..Default::default()
        };
        r.saddr[..4].copy_from_slice(&a);
        r.daddr[..4].copy_from_slice(&b);
        r
    }

    /// Runs a conversation through `decide` with a map of one entry and returns which segments were emitted.
    fn run(segments: &[TcpRecord]) -> (Vec<bool>, Option<ControlState>) {
        let mut entry = None;
        let mut emitted = Vec::new();
        for r in segments {
            let (_, lo) = FlowKey::of(r);
            let d = decide(r, lo, entry);
            emitted.push(d.emit);
            match d.update {
                Update::Keep => {}
                Update::Store(s) => entry = Some(s),
                Update::Delete => entry = None,
            }
        }
        (emitted, entry)
    }

    #[test]
    fn full_connection_emits_only_control_segments() {
        let a = TCP_ACK;
        let conv = [
            seg(true, TCP_SYN, 100, 0, 0),
            seg(false, TCP_SYN | a, 500, 101, 0),
            seg(true, a, 101, 501, 0),            // completes the handshake
            seg(true, a | 0x08, 101, 501, 10),    // data
            seg(false, a, 501, 111, 0),           // ack of data
            seg(true, TCP_FIN | a, 111, 501, 0),  // client closes
            seg(false, a, 501, 112, 0),           // answers the FIN
            seg(false, a | 0x08, 501, 112, 5),    // half-close data from the server
            seg(true, a, 112, 506, 0),            // ack of that data: not a FIN answer
            seg(false, TCP_FIN | a, 506, 112, 0), // server closes
            seg(true, a, 112, 507, 0),            // answers the FIN
        ];
        let (emitted, left) = run(&conv);
        assert_eq!(
            emitted,
            [true, true, true, false, false, true, true, false, false, true, true]
        );
        assert_eq!(left, None, "a closed flow leaves nothing in the map");
    }

    #[test]
    fn combined_fin_ack_answers_and_closes() {
        let a = TCP_ACK;
        let conv = [
            seg(true, TCP_FIN | a, 1000, 2000, 0),
            seg(false, TCP_FIN | a, 2000, 1001, 0),
            seg(true, a, 1001, 2001, 0),
        ];
        let (emitted, left) = run(&conv);
        assert_eq!(emitted, [true, true, true]);
        assert_eq!(left, None);
    }

    #[test]
    fn rst_and_new_syn_forget_the_flow() {
        let a = TCP_ACK;
        let (emitted, left) = run(&[
            seg(false, TCP_SYN | a, 9, 1, 0),
            seg(true, TCP_RST, 1, 0, 0),
            seg(true, a, 1, 10, 0),
        ]);
        assert_eq!(emitted, [true, true, false]);
        assert_eq!(left, None);
    }
}
