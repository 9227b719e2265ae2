//! The exit report (dropped records first, then the analysis: connections, handshake RTT, retransmissions,
//! expert flags, ARP; then the capture's counters and each ring's identity) and the summary item.

use std::fmt::Write as _;

use observer_common::Counter;
use serde_json::{Map, Value, json};

use crate::model::accounting::{Accounts, ExitReport, NOT_RECORDED, RingAccount};
use crate::model::arp::ArpCounts;
use crate::model::flows::expert::ExpertFlag;
use crate::model::flows::stats::FlowStats;
use crate::view::render::{Clock, LineHead, fmt_ms};

/// A few lines about the flows.
pub fn flows(s: &FlowStats) -> String {
    let mut out = format!(
        "connections: {} opened, {} closed ({} FIN, {} RST); handshakes {} reset, {} never completed\n",
        s.opened,
        s.closed_fin + s.closed_rst,
        s.closed_fin,
        s.closed_rst,
        s.handshakes_reset,
        s.handshakes_incomplete
    );
    match [50, 90, 99, 100].map(|p| s.rtt_percentile_us(p)) {
        [Some(p50), Some(p90), Some(p99), Some(max)] => {
            let _ = writeln!(
                out,
                "handshake RTT: p50 {} p90 {} p99 {} max {} ({} completed)",
                us(p50),
                us(p90),
                us(p99),
                us(max),
                s.rtt_seen
            );
        }
        _ => out.push_str("handshake RTT: no completed handshake\n"),
    }
    let _ = writeln!(out, "retransmissions: {}", s.retransmissions());
    let flags: Vec<String> = ExpertFlag::ALL
        .iter()
        .filter(|f| s.flag_count(**f) > 0)
        .map(|f| format!("{} {}", f.text().trim_start_matches("TCP "), s.flag_count(*f)))
        .collect();
    let _ = writeln!(
        out,
        "expert flags: {}",
        if flags.is_empty() {
            "none".to_owned()
        } else {
            flags.join(", ")
        }
    );
    let _ = writeln!(out, "flows: {} evicted, {} expired", s.evicted, s.expired);
    out
}

/// One line about ARP.
pub fn arp(c: &ArpCounts) -> String {
    format!(
        "arp: {} requests ({} answered, {} unanswered, {} retries, {} probes), {} replies ({} unsolicited), \
         {} gratuitous, {} announcements, {} duplicate-address packets",
        c.requests,
        c.answered,
        c.unanswered,
        c.retries,
        c.probes,
        c.replies,
        c.unsolicited,
        c.gratuitous,
        c.announcements,
        c.duplicates
    )
}

/// `<ring>: seen N = recorded A + ... (holds)`, or `(DOES NOT HOLD: ...)` when the outcomes do not add up.
pub fn identity(ring: &str, a: &RingAccount) -> String {
    let terms: Vec<String> = a.outcomes.iter().map(|(name, n)| format!("{name} {n}")).collect();
    let verdict = if a.holds() {
        "holds".to_owned()
    } else {
        format!("DOES NOT HOLD: the outcomes add up to {}", a.sum())
    };
    format!("{ring}: seen {} = {} ({verdict})", a.seen, terms.join(" + "))
}

/// The text of the summary item: one identity line per ring.
pub fn accounts_text(a: &Accounts) -> String {
    let mut lines = vec![identity("packet ring", &a.packet)];
    lines.extend(a.socket.as_ref().map(|s| identity("socket ring", s)));
    lines.join("\n")
}

/// The JSON object of the `summary` line (schema in the README).
pub fn accounts_json(clock: &Clock, a: &Accounts) -> Value {
    let ring = |r: &RingAccount| {
        let mut m = Map::new();
        m.insert("seen".into(), r.seen.into());
        for (name, n) in &r.outcomes {
            m.insert(name.replace(' ', "_"), (*n).into());
        }
        m.insert("holds".into(), r.holds().into());
        Value::Object(m)
    };
    let mut v = json!({
        "packet_ring": ring(&a.packet),
        "socket_ring": a.socket.as_ref().map(ring),
        "printed": a.printed,
        "kernel_lines": a.kernel_lines,
        "undecodable": a.undecodable,
        "summary": accounts_text(a),
    });
    if let (Value::Object(m), Ok(Value::Object(head))) =
        (&mut v, serde_json::to_value(LineHead::new(clock, a.ts_ns, "summary")))
    {
        m.extend(head);
    }
    v
}

/// The exit report's text, a line per fact, for stderr.
pub fn exit_report(r: &ExitReport<'_>) -> String {
    let (c, a) = (r.counters, r.accounts);
    let mut s = format!(
        "dropped records (ring buffer full): {}\nrecords: {} emitted, {} printed, {} undecodable\n",
        c.get(Counter::RingFull) + c.get(Counter::SockRingFull),
        c.get(Counter::Emitted),
        a.printed,
        a.undecodable
    );
    s += &flows(&r.flows);
    s += &arp(&r.arp);
    s.push('\n');
    let _ = writeln!(
        s,
        "frames seen: tc ingress {}, tc egress {}, xdp {}",
        c.get(Counter::SeenTcIngress),
        c.get(Counter::SeenTcEgress),
        c.get(Counter::SeenXdp)
    );
    let skipped: Vec<String> = NOT_RECORDED
        .iter()
        .map(|k| format!("{} {}", k.name(), c.get(*k)))
        .collect();
    let _ = writeln!(s, "not recorded: {}", skipped.join(", "));
    let malformed: Vec<String> = Counter::ALL
        .iter()
        .filter(|k| k.is_malformed())
        .map(|k| format!("{} {}", k.name().trim_start_matches("malformed_"), c.get(*k)))
        .collect();
    let _ = writeln!(s, "malformed: {} ({})", c.malformed(), malformed.join(", "));
    let _ = writeln!(
        s,
        "folded: {} data segments, {} of them in {} flow lines",
        c.get(Counter::Folded),
        r.folded_reported,
        r.folded_items
    );
    s += &identity("packet ring", &a.packet);
    s.push('\n');
    if let (Some(sockets), Some(ring)) = (&r.sockets, &a.socket) {
        let seen: Vec<String> = Counter::ALL
            .iter()
            .filter(|k| k.name().starts_with("sock_seen"))
            .map(|k| format!("{} {}", k.name().trim_start_matches("sock_seen_"), c.get(*k)))
            .collect();
        let _ = writeln!(
            s,
            "socket events: {} emitted, {} lost (ring full), {} other netns, {} unreadable, {} kernel lines ({})",
            c.get(Counter::SockEmitted),
            c.get(Counter::SockRingFull),
            c.get(Counter::SockOtherNetns),
            c.get(Counter::SockUnreadable),
            a.kernel_lines,
            seen.join(", ")
        );
        s += &identity("socket ring", ring);
        s.push('\n');
        let drops: Vec<String> = sockets.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "sockets: {} tracked; segments dropped at listeners: {}",
            sockets.tracked,
            if drops.is_empty() {
                "none".to_owned()
            } else {
                drops.join(", ")
            }
        );
    }
    s
}

fn us(us: u32) -> String {
    fmt_ms(u64::from(us) * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::accounting::SocketReport;
    use crate::sys::capture::Counters;

    /// The exit report of `c`, with `printed` wire records and sockets linked or not.
    fn report_of(c: &Counters, printed: u64, sockets: Option<SocketReport>) -> String {
        let accounts = Accounts {
            ts_ns: 0,
            packet: RingAccount::packets(c),
            socket: sockets.is_some().then(|| RingAccount::sockets(c)),
            printed,
            kernel_lines: 0,
            undecodable: 0,
        };
        exit_report(&ExitReport {
            counters: c,
            accounts: &accounts,
            flows: FlowStats::default(),
            arp: ArpCounts::default(),
            folded_reported: 0,
            folded_items: 0,
            sockets,
        })
    }

    #[test]
    fn report_puts_drops_first_and_names_every_class() {
        let mut c = Counters::default();
        c.0[Counter::RingFull as usize] = 3;
        c.0[Counter::SockRingFull as usize] = 1;
        c.0[Counter::OptionOverrun as usize] = 2;
        let r = report_of(&c, 5, None);
        assert!(r.starts_with("dropped records (ring buffer full): 4\n"), "{r}");
        assert!(r.contains("malformed: 2 (") && r.contains("option_overrun 2"), "{r}");
        assert!(r.contains("5 printed"), "{r}");
        let analysis = [
            "connections: ",
            "handshake RTT: ",
            "retransmissions: ",
            "expert flags: ",
            "arp: ",
        ];
        assert!(analysis.iter().all(|k| r.contains(&format!("\n{k}"))), "{r}");
        assert!(!r.contains("socket ring") && !r.contains("sockets: "), "{r}");
    }

    #[test]
    fn the_identity_says_whether_the_outcomes_add_up() {
        let mut c = Counters::default();
        c.0[Counter::SeenTcIngress as usize] = 10;
        c.0[Counter::Emitted as usize] = 6;
        c.0[Counter::Folded as usize] = 2;
        c.0[Counter::RingFull as usize] = 1;
        c.0[Counter::Filtered as usize] = 1;
        let r = report_of(&c, 0, None);
        assert!(
            r.contains(
                "packet ring: seen 10 = recorded 6 + folded 2 + lost 1 + not recorded 1 + malformed 0 (holds)\n"
            ),
            "{r}"
        );
        c.0[Counter::Emitted as usize] = 5;
        let r = report_of(&c, 0, None);
        assert!(r.contains("(DOES NOT HOLD: the outcomes add up to 9)"), "{r}");
    }

    #[test]
    fn linked_sockets_add_the_socket_ring_and_the_listener_drops() {
        let mut c = Counters::default();
        c.0[Counter::SockEmitted as usize] = 4;
        let sockets = SocketReport {
            tracked: 2,
            drops: vec![("accept_queue_full", 1), ("no_answer", 3)],
        };
        let r = report_of(&c, 0, Some(sockets));
        assert!(r.contains("socket events: 4 emitted, 0 lost (ring full)"), "{r}");
        assert!(r.contains("\nsocket ring: seen 0 = recorded 4 + "), "{r}");
        assert!(
            r.ends_with("sockets: 2 tracked; segments dropped at listeners: accept_queue_full 1, no_answer 3\n"),
            "{r}"
        );
        let r = report_of(&c, 0, Some(SocketReport::default()));
        assert!(r.ends_with("segments dropped at listeners: none\n"), "{r}");
    }

    #[test]
    fn flow_lines() {
        let mut s = FlowStats::default();
        s.add_rtt(120);
        s.opened = 1;
        s.closed_fin = 1;
        s.flags[ExpertFlag::Retransmission as usize] = 2;
        s.flags[ExpertFlag::DupAck as usize] = 3;
        s.evicted = 4;
        assert_eq!(
            flows(&s),
            "connections: 1 opened, 1 closed (1 FIN, 0 RST); handshakes 0 reset, 0 never completed\n\
             handshake RTT: p50 0.120 ms p90 0.120 ms p99 0.120 ms max 0.120 ms (1 completed)\n\
             retransmissions: 2\n\
             expert flags: Dup ACK 3, Retransmission 2\n\
             flows: 4 evicted, 0 expired\n"
        );
        assert!(flows(&FlowStats::default()).contains("handshake RTT: no completed handshake\n"));
    }

    #[test]
    fn arp_line() {
        let c = ArpCounts {
            requests: 5,
            retries: 2,
            unanswered: 3,
            ..ArpCounts::default()
        };
        assert!(arp(&c).starts_with("arp: 5 requests (0 answered, 3 unanswered, 2 retries, 0 probes), 0 replies"));
    }
}
