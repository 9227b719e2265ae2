//! The analysis part of the exit report: connections, handshake RTT, retransmissions, expert flags, ARP.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::model::accounting::{Accounts, RingAccount};
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

fn us(us: u32) -> String {
    fmt_ms(u64::from(us) * 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

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
