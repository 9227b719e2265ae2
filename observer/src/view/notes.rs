//! The annotations after a line's Info (`·`-separated) and in its pcapng comment: what the model found about a
//! packet, in words.

use std::fmt::Write as _;

use crate::model::arp::{Answer, ResolutionWait, Unanswered};
use crate::sys::neigh::NeighChange;
use crate::view::render::{fmt_mac, fmt_ms};

/// A reply's request, e.g. `answers #12 in 0.210 ms (try 2)`; `also answers` when an earlier reply did.
pub fn answer(a: &Answer) -> String {
    let mut s = format!(
        "{}answers #{} in {}",
        if a.again { "also " } else { "" },
        a.request_frame,
        fmt_ms(a.response_ns)
    );
    if a.tries > 1 {
        let _ = write!(s, " (try {})", a.tries);
    }
    s
}

/// A request that repeats an unanswered one, e.g. `retry 2, unanswered`; `None` for a first try.
pub fn retry(retry: u32) -> Option<String> {
    (retry > 0).then(|| format!("retry {retry}, unanswered"))
}

/// A request given up: `unanswered after 3 tries`.
pub fn unanswered(u: &Unanswered) -> String {
    let plural = if u.tries == 1 { "try" } else { "tries" };
    format!("unanswered after {} {plural}", u.tries)
}

/// A SYN that waited on ARP: `waited 1.200 ms for ARP 10.1.0.2`.
pub fn resolution_wait(w: &ResolutionWait) -> String {
    format!("waited {} for ARP {}", fmt_ms(w.wait_ns), w.target)
}

/// The neighbour change a reply caused: `neigh 10.1.0.2 INCOMPLETE→REACHABLE aa:bb:cc:dd:ee:ff`.
pub fn neigh(c: &NeighChange) -> String {
    let mut s = format!("neigh {} {}", c.ip, c.state_text());
    if let Some(mac) = c.lladdr {
        s.push(' ');
        s.push_str(&fmt_mac(&mac));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sys::neigh::NeighState;

    const MS: u64 = 1_000_000;

    #[test]
    fn arp_annotations() {
        let mut a = Answer {
            request_frame: 3,
            response_ns: MS,
            tries: 1,
            again: false,
        };
        assert_eq!(answer(&a), "answers #3 in 1.000 ms");
        (a.again, a.tries, a.response_ns) = (true, 2, 2 * MS);
        assert_eq!(answer(&a), "also answers #3 in 2.000 ms (try 2)");
        assert_eq!(retry(0), None);
        assert_eq!(retry(2).as_deref(), Some("retry 2, unanswered"));
        let mut u = Unanswered {
            ts_ns: 0,
            ifindex: 0,
            sender_ip: Ipv4Addr::new(192, 168, 1, 1),
            target_ip: Ipv4Addr::new(192, 168, 1, 9),
            tries: 3,
            first_frame: 1,
            last_frame: 3,
        };
        assert_eq!(unanswered(&u), "unanswered after 3 tries");
        u.tries = 1;
        assert_eq!(unanswered(&u), "unanswered after 1 try");
        let w = ResolutionWait {
            target: Ipv4Addr::new(192, 168, 1, 2),
            wait_ns: MS,
            request_frame: 1,
            reply_frame: 2,
        };
        assert_eq!(resolution_wait(&w), "waited 1.000 ms for ARP 192.168.1.2");
    }

    #[test]
    fn neigh_annotation() {
        let mut c = NeighChange {
            ts_ns: 7,
            ifindex: 0,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            lladdr: Some([2, 0xbb, 0, 0, 0, 2]),
            old: Some(NeighState::INCOMPLETE),
            state: NeighState::REACHABLE,
            deleted: false,
        };
        assert_eq!(neigh(&c), "neigh 10.0.0.2 INCOMPLETE→REACHABLE 02:bb:00:00:00:02");
        c.lladdr = None;
        assert_eq!(neigh(&c), "neigh 10.0.0.2 INCOMPLETE→REACHABLE");
    }
}
