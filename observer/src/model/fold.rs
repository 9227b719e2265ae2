//! The kernel's folded data segments (see `observer_common::fold`) as one item per flow per reading: what was
//! folded since the previous reading. Entries that did not grow are handed back for removal, so the kernel's
//! table holds only flows being folded now.

use std::net::SocketAddr;

use observer_common::{control::FlowKey, fold::FoldedFlow};

use crate::model::FastMap;
use crate::model::events::ip_of;

/// What was folded of one flow between two readings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    /// The lower endpoint of the flow (address, then port).
    pub lo: SocketAddr,
    /// The higher endpoint.
    pub hi: SocketAddr,
    /// Segments folded since the previous reading.
    pub packets: u64,
    /// Their TCP payload bytes.
    pub bytes: u64,
    /// Those of them that the kernel counted as retransmitted (see `FoldedFlow::retransmits`).
    pub retransmits: u64,
    /// Boot-time ns of the first of them as far as the readings tell: the entry's first fold, or the last one
    /// the previous reading saw.
    pub from_ns: u64,
    /// Boot-time ns of the last of them.
    pub to_ns: u64,
}

/// Turns successive readings of the kernel's table into [`Folded`] items.
#[derive(Debug, Default)]
pub struct FoldTracker {
    last: FastMap<FlowKey, FoldedFlow>,
    /// Segments reported in items so far.
    pub reported: u64,
    /// Items produced so far.
    pub items: u64,
}

impl FoldTracker {
    /// Takes a reading of every entry: returns the items of the flows that grew and the keys of those that did
    /// not, which the caller removes from the kernel's table (a segment folded between this reading and that
    /// removal stays in the `Folded` counter but in no item).
    pub fn update(&mut self, reading: Vec<(FlowKey, FoldedFlow)>) -> (Vec<Folded>, Vec<FlowKey>) {
        let mut items = Vec::new();
        let mut idle = Vec::new();
        let mut next = FastMap::with_capacity_and_hasher(reading.len(), Default::default());
        for (key, now) in reading {
            let before = self.last.get(&key).copied().unwrap_or_default();
            if now.packets <= before.packets {
                idle.push(key);
                continue;
            }
            let (lo, hi) = endpoints(&key);
            items.push(Folded {
                lo,
                hi,
                packets: now.packets - before.packets,
                bytes: now.bytes.saturating_sub(before.bytes),
                retransmits: now.retransmits.saturating_sub(before.retransmits),
                from_ns: if before.packets == 0 {
                    now.first_ns
                } else {
                    before.last_ns
                },
                to_ns: now.last_ns,
            });
            next.insert(key, now);
        }
        self.last = next;
        items.sort_by_key(|f| f.to_ns);
        self.items += items.len() as u64;
        self.reported += items.iter().map(|f| f.packets).sum::<u64>();
        (items, idle)
    }
}

/// The two endpoints of a flow key.
fn endpoints(k: &FlowKey) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(ip_of(k.ip_version, &k.addr_lo), k.port_lo),
        SocketAddr::new(ip_of(k.ip_version, &k.addr_hi), k.port_hi),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey {
            port_lo: port,
            port_hi: 5001,
            ip_version: 4,
            ..FlowKey::default()
        };
        k.addr_lo[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.addr_hi[..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    fn flow(packets: u64, first_ns: u64, last_ns: u64) -> FoldedFlow {
        FoldedFlow {
            packets,
            bytes: packets * 64,
            first_ns,
            last_ns,
            retransmits: packets / 4,
            ..FoldedFlow::default()
        }
    }

    #[test]
    fn each_reading_reports_the_growth_and_hands_back_idle_flows() {
        let mut t = FoldTracker::default();
        let (items, idle) = t.update(vec![(key(4000), flow(5, 100, 200))]);
        assert!(idle.is_empty());
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].lo, "10.0.0.1:4000".parse().unwrap());
        assert_eq!(items[0].hi, "10.0.0.2:5001".parse().unwrap());
        assert_eq!(
            (items[0].packets, items[0].bytes, items[0].from_ns, items[0].to_ns),
            (5, 320, 100, 200)
        );

        let (items, idle) = t.update(vec![(key(4000), flow(8, 100, 300)), (key(4001), flow(1, 250, 250))]);
        assert!(idle.is_empty());
        assert_eq!(
            items
                .iter()
                .map(|f| (f.lo.port(), f.packets, f.retransmits, f.from_ns, f.to_ns))
                .collect::<Vec<_>>(),
            [(4001, 1, 0, 250, 250), (4000, 3, 1, 200, 300)]
        );

        let (items, idle) = t.update(vec![(key(4000), flow(8, 100, 300)), (key(4001), flow(2, 250, 260))]);
        assert_eq!(idle, [key(4000)]);
        assert_eq!(items.len(), 1);
        assert_eq!((t.reported, t.items), (10, 4));

        // A removed entry made again by the kernel starts from zero.
        let (items, _) = t.update(vec![(key(4000), flow(2, 400, 410))]);
        assert_eq!((items[0].packets, items[0].from_ns), (2, 400));
    }
}
