//! SACK holes: the ranges an ACK's SACK blocks imply are missing above its ack number, and the later
//! segments that retransmit into them (the receiver acknowledged A and D, the sender resends B and C).
//!
//! Fixed size: at most [`MAX_SACK_BLOCKS`] holes per direction, the latest SACK's.

use observer_common::record::{MAX_SACK_BLOCKS, SackBlock};

/// The holes of one SACK-carrying ACK, as `[left, right)` ranges in the sender's sequence space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holes {
    ranges: [SackBlock; MAX_SACK_BLOCKS],
    count: usize,
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Holes {
    /// The holes `blocks` leave above `ack`: from `ack` to the lowest block, then between blocks, in sequence
    /// order. Blocks at or below `ack` (D-SACK) and empty blocks leave none.
    pub fn of(ack: u32, blocks: &[SackBlock]) -> Self {
        let mut sorted = [SackBlock::default(); MAX_SACK_BLOCKS];
        let mut n = 0;
        for b in blocks.iter().take(MAX_SACK_BLOCKS) {
            if seq_lt(ack, b.right) && seq_lt(b.left, b.right) {
                sorted[n] = *b;
                n += 1;
            }
        }
        let sorted = &mut sorted[..n];
        sorted.sort_by_key(|b| b.left.wrapping_sub(ack));
        let mut holes = Holes::default();
        let mut edge = ack;
        for b in sorted.iter() {
            if seq_lt(edge, b.left) {
                holes.ranges[holes.count] = SackBlock {
                    left: edge,
                    right: b.left,
                };
                holes.count += 1;
            }
            if seq_lt(edge, b.right) {
                edge = b.right;
            }
        }
        holes
    }

    /// The holes, in sequence order.
    pub fn ranges(&self) -> &[SackBlock] {
        &self.ranges[..self.count]
    }

    /// Whether there is no hole.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first hole that `[seq, seq + len)` overlaps.
    pub fn filled_by(&self, seq: u32, len: u32) -> Option<SackBlock> {
        if len == 0 {
            return None;
        }
        let end = seq.wrapping_add(len);
        self.ranges()
            .iter()
            .copied()
            .find(|h| seq_lt(seq, h.right) && seq_lt(h.left, end))
    }

    /// The same holes with both edges minus `base` (relative numbers).
    pub fn relative_to(&self, base: u32) -> Self {
        let mut out = *self;
        for h in &mut out.ranges[..out.count] {
            h.left = h.left.wrapping_sub(base);
            h.right = h.right.wrapping_sub(base);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(left: u32, right: u32) -> SackBlock {
        SackBlock { left, right }
    }

    #[test]
    fn holes_between_ack_and_blocks_in_sequence_order() {
        let h = Holes::of(1000, &[b(3000, 4000), b(1500, 2000)]);
        assert_eq!(h.ranges(), [b(1000, 1500), b(2000, 3000)]);
        assert_eq!(h.filled_by(1000, 100), Some(b(1000, 1500)));
        assert_eq!(h.filled_by(2500, 100), Some(b(2000, 3000)));
        assert_eq!(h.filled_by(1500, 500), None, "already SACKed");
        assert_eq!(h.filled_by(4000, 100), None, "new data");
        assert_eq!(h.relative_to(999).ranges(), [b(1, 501), b(1001, 2001)]);
    }

    #[test]
    fn dsack_and_adjacent_blocks_leave_no_hole() {
        assert!(Holes::of(1000, &[b(500, 900)]).is_empty());
        assert_eq!(Holes::of(1000, &[b(800, 900), b(1200, 1300)]).ranges(), [b(1000, 1200)]);
        assert_eq!(Holes::of(1000, &[b(1000, 1100), b(1100, 1200)]).ranges(), []);
    }

    #[test]
    fn holes_across_sequence_wrap() {
        let h = Holes::of(u32::MAX - 99, &[b(100, 200)]);
        assert_eq!(h.ranges(), [b(u32::MAX - 99, 100)]);
        assert_eq!(h.filled_by(0, 10), Some(b(u32::MAX - 99, 100)));
    }
}
