//! Counters for the exit summary: connections, handshake RTTs, retransmissions, expert flags by kind.

use super::expert::{Expert, ExpertFlag};
use super::timeline::{HandshakeOutcome, HandshakeReport, TeardownKind, TeardownReport};

/// Most iRTT samples kept; beyond it a deterministic reservoir keeps a uniform sample.
pub const MAX_RTT_SAMPLES: usize = 65_536;

/// What the flow analysis saw, for the exit summary.
#[derive(Clone, Debug, Default)]
pub struct FlowStats {
    /// Handshakes completed.
    pub opened: u64,
    /// Connections closed by both FINs acknowledged.
    pub closed_fin: u64,
    /// Connections closed by an RST.
    pub closed_rst: u64,
    /// Handshakes ended by an RST.
    pub handshakes_reset: u64,
    /// Handshakes never completed (flow expired, evicted, or the agent stopped).
    pub handshakes_incomplete: u64,
    /// Segments flagged by kind, indexed like [`ExpertFlag::ALL`].
    pub flags: [u64; ExpertFlag::ALL.len()],
    /// Flows evicted by the cap.
    pub evicted: u64,
    /// Flows forgotten after the close linger or the idle time.
    pub expired: u64,
    rtt_us: Vec<u32>,
    /// Handshake RTTs taken (more than the reservoir keeps).
    pub rtt_seen: u64,
    rng: u64,
}

impl FlowStats {
    pub(crate) fn count_flags(&mut self, e: &Expert) {
        for f in e.flags() {
            self.flags[f as usize] += 1;
        }
    }

    pub(crate) fn count_handshake(&mut self, h: &HandshakeReport) {
        match h.outcome {
            HandshakeOutcome::Complete => {
                self.opened += 1;
                if let Some(ns) = h.irtt_ns() {
                    self.add_rtt(u32::try_from(ns / 1000).unwrap_or(u32::MAX));
                }
            }
            HandshakeOutcome::Reset { .. } => self.handshakes_reset += 1,
            HandshakeOutcome::Incomplete => self.handshakes_incomplete += 1,
        }
    }

    pub(crate) fn count_teardown(&mut self, t: &TeardownReport) {
        match t.kind {
            TeardownKind::Fin => self.closed_fin += 1,
            TeardownKind::Reset => self.closed_rst += 1,
        }
    }

    pub(crate) fn add_rtt(&mut self, us: u32) {
        self.rtt_seen += 1;
        if self.rtt_us.len() < MAX_RTT_SAMPLES {
            self.rtt_us.push(us);
            return;
        }
        // xorshift64: a fixed sequence keeps runs reproducible.
        self.rng ^= self.rng << 13 | 1;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let slot = self.rng % self.rtt_seen;
        if let Ok(i) = usize::try_from(slot)
            && i < MAX_RTT_SAMPLES
        {
            self.rtt_us[i] = us;
        }
    }

    /// Segments flagged with `flag`.
    pub fn flag_count(&self, flag: ExpertFlag) -> u64 {
        self.flags[flag as usize]
    }

    /// Retransmissions of every kind (plain, fast, spurious).
    pub fn retransmissions(&self) -> u64 {
        ExpertFlag::ALL
            .iter()
            .filter(|f| f.is_retransmission())
            .map(|f| self.flag_count(*f))
            .sum()
    }

    /// The iRTT at percentile `p` (0–100) in microseconds (nearest rank), `None` without samples.
    pub fn rtt_percentile_us(&self, p: u32) -> Option<u32> {
        let mut v = self.rtt_us.clone();
        v.sort_unstable();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let rank = (usize::try_from(p.min(100)).unwrap_or(100) * n).div_ceil(100).max(1);
        v.get(rank - 1).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = FlowStats::default();
        for us in (1..=100).rev() {
            s.add_rtt(us * 10);
        }
        assert_eq!(
            [50, 90, 99, 100].map(|p| s.rtt_percentile_us(p)),
            [Some(500), Some(900), Some(990), Some(1000)]
        );
        assert_eq!(FlowStats::default().rtt_percentile_us(50), None);
    }

    #[test]
    fn reservoir_stays_bounded() {
        let mut s = FlowStats::default();
        for i in 0..(MAX_RTT_SAMPLES as u32 + 1000) {
            s.add_rtt(i);
        }
        assert_eq!(s.rtt_us.len(), MAX_RTT_SAMPLES);
        assert_eq!(s.rtt_seen, MAX_RTT_SAMPLES as u64 + 1000);
    }
}
