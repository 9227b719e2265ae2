//! Each ring's account at exit: every call of its programs ends in exactly one outcome, so what was seen is the
//! sum of the outcomes.

use observer_common::Counter;

use crate::model::arp::ArpCounts;
use crate::model::flows::stats::FlowStats;
use crate::sys::capture::Counters;

/// The packet outcomes that are neither a record, a fold, a loss nor malformed.
pub const NOT_RECORDED: [Counter; 5] = [
    Counter::Filtered,
    Counter::ControlSuppressed,
    Counter::NotTcpOrArp,
    Counter::ArpUnsupported,
    Counter::NonFirstFragment,
];

/// One ring's calls and their outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingAccount {
    /// Program calls: frames, or socket events.
    pub seen: u64,
    /// Each outcome's count, by name (`recorded`, `folded`, `lost` ...), in the report's order.
    pub outcomes: Vec<(&'static str, u64)>,
}

impl RingAccount {
    /// The packet ring: seen = recorded + folded + lost + not recorded + malformed.
    pub fn packets(c: &Counters) -> Self {
        RingAccount {
            seen: c.get(Counter::SeenTcIngress) + c.get(Counter::SeenTcEgress) + c.get(Counter::SeenXdp),
            outcomes: vec![
                ("recorded", c.get(Counter::Emitted)),
                ("folded", c.get(Counter::Folded)),
                ("lost", c.get(Counter::RingFull)),
                ("not recorded", NOT_RECORDED.iter().map(|k| c.get(*k)).sum()),
                ("malformed", c.malformed()),
            ],
        }
    }

    /// The socket ring: seen = recorded + lost + other netns + not tcp + unreadable.
    pub fn sockets(c: &Counters) -> Self {
        RingAccount {
            seen: Counter::ALL
                .iter()
                .filter(|k| k.name().starts_with("sock_seen"))
                .map(|k| c.get(*k))
                .sum(),
            outcomes: vec![
                ("recorded", c.get(Counter::SockEmitted)),
                ("lost", c.get(Counter::SockRingFull)),
                ("other netns", c.get(Counter::SockOtherNetns)),
                ("not tcp", c.get(Counter::SockNotTcp)),
                ("unreadable", c.get(Counter::SockUnreadable)),
            ],
        }
    }

    /// The outcomes added up.
    pub fn sum(&self) -> u64 {
        self.outcomes.iter().map(|(_, n)| n).sum()
    }

    /// Whether they add up to what was seen.
    pub fn holds(&self) -> bool {
        self.sum() == self.seen
    }
}

/// What the agent accounts for at exit: the summary item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accounts {
    /// Boot-time ns of the account.
    pub ts_ns: u64,
    /// The packet ring.
    pub packet: RingAccount,
    /// The socket ring, when sockets were linked.
    pub socket: Option<RingAccount>,
    /// Wire records printed (TCP and ARP).
    pub printed: u64,
    /// Kernel lines printed.
    pub kernel_lines: u64,
    /// Ring entries that did not decode.
    pub undecodable: u64,
}

/// Everything the exit report tells: the capture's counters and what the agent made of them.
#[derive(Clone, Debug)]
pub struct ExitReport<'a> {
    /// The capture's counters, summed over CPUs.
    pub counters: &'a Counters,
    /// Each ring's account and what was printed.
    pub accounts: &'a Accounts,
    /// The flow analysis.
    pub flows: FlowStats,
    /// The ARP analysis.
    pub arp: ArpCounts,
    /// Folded segments reported in flow lines, and those lines.
    pub folded_reported: u64,
    /// Folded flow lines printed.
    pub folded_items: u64,
    /// The socket side, when sockets were linked.
    pub sockets: Option<SocketReport>,
}

/// The socket model at exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketReport {
    /// Connections tracked.
    pub tracked: usize,
    /// Segments dropped at listeners, per reason, sorted by reason.
    pub drops: Vec<(&'static str, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_holds_only_when_its_outcomes_add_up() {
        let mut c = Counters::default();
        c.0[Counter::SeenTcIngress as usize] = 10;
        c.0[Counter::Emitted as usize] = 6;
        c.0[Counter::Folded as usize] = 2;
        c.0[Counter::Filtered as usize] = 1;
        let a = RingAccount::packets(&c);
        assert_eq!((a.seen, a.sum(), a.holds()), (10, 9, false));
        c.0[Counter::RingFull as usize] = 1;
        assert!(RingAccount::packets(&c).holds());
        assert!(RingAccount::sockets(&Counters::default()).holds());
    }
}
