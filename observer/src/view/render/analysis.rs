//! `analysis` lines: one per handshake and per teardown,
//! `<time> analysis <client> ↔ <server> handshake: ...` / `teardown: ...`, or JSON with `"proto": "analysis"`.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Clock, LineHead, json_text};
use crate::model::flows::timeline::{
    HandshakeOutcome, HandshakeReport, Role, SynOptions, TeardownKind, TeardownReport,
};

fn us(ns: u64) -> u64 {
    ns / 1000
}

use super::fmt_ms as ms;

fn options_text(o: &SynOptions) -> String {
    let mut parts = Vec::new();
    if let Some(m) = o.mss {
        parts.push(format!("MSS={m}"));
    }
    if let Some(w) = o.wscale {
        parts.push(format!("WS={}", 1u32 << w.min(crate::model::flows::MAX_WINDOW_SHIFT)));
    }
    if o.sack_perm {
        parts.push("SACK_PERM".to_owned());
    }
    if o.timestamps {
        parts.push("TS".to_owned());
    }
    if parts.is_empty() {
        "no options".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The text after `handshake: `.
pub fn handshake_text(h: &HandshakeReport) -> String {
    let mut s = match h.outcome {
        HandshakeOutcome::Complete => {
            let mut s = format!("complete, iRTT {}", h.irtt_ns().map(ms).unwrap_or_else(|| "?".into()));
            if let (Some(a), Some(b)) = (h.syn_to_synack_ns(), h.synack_to_ack_ns()) {
                let _ = write!(s, " (SYN→SYN-ACK {}, SYN-ACK→ACK {})", ms(a), ms(b));
            }
            s
        }
        HandshakeOutcome::Reset { by_server } => {
            let seen = if h.synack_ns.is_some() { "SYN-ACK" } else { "SYN" };
            let by = if by_server { "server" } else { "client" };
            let mut s = format!("reset by {by} after {seen}");
            if let Some(syn) = h.syn_ns {
                let _ = write!(s, " (SYN→RST {})", ms(h.ts_ns.saturating_sub(syn)));
            }
            s
        }
        HandshakeOutcome::Incomplete => {
            if h.synack_ns.is_some() {
                "never completed: SYN-ACK not acknowledged".to_owned()
            } else {
                "never completed: no SYN-ACK".to_owned()
            }
        }
    };
    if let Some(c) = &h.client_options {
        let _ = write!(s, " · client {}", options_text(c));
    }
    if let Some(o) = &h.server_options {
        let _ = write!(s, " · server {}", options_text(o));
    }
    if let Some(a) = h.agreed() {
        let ws = match a.wscale {
            Some((c, sv)) => format!("window scaling ×{}/×{}", 1u32 << c.min(14), 1u32 << sv.min(14)),
            None => "no window scaling".to_owned(),
        };
        let _ = write!(
            s,
            " · agreed: MSS {} to server, {} to client, {ws}, SACK {}, timestamps {}",
            a.mss_to_server,
            a.mss_to_client,
            if a.sack { "on" } else { "off" },
            if a.timestamps { "on" } else { "off" }
        );
    }
    if h.syn_retransmissions > 0 {
        let _ = write!(s, " · SYN retransmitted {}×", h.syn_retransmissions);
    }
    if h.synack_retransmissions > 0 {
        let _ = write!(s, " · SYN-ACK retransmitted {}×", h.synack_retransmissions);
    }
    s
}

/// The text after `teardown: `.
pub fn teardown_text(t: &TeardownReport) -> String {
    let mut s = match (t.kind, t.active_closer) {
        (TeardownKind::Fin, Some(r)) => {
            let addr = if r == Role::Client { t.client } else { t.server };
            format!("{} closed first (TIME_WAIT on {addr})", r.name())
        }
        (TeardownKind::Fin, None) => "closed".to_owned(),
        (TeardownKind::Reset, _) => {
            let by = t.steps().last().map(|s| s.from.name()).unwrap_or("?");
            format!("reset by {by}")
        }
    };
    let start = t.steps().first().map(|s| s.ts_ns).unwrap_or(t.ts_ns);
    let steps: Vec<String> = t
        .steps()
        .iter()
        .map(|st| {
            format!(
                "{} {} +{}",
                st.kind.name(),
                st.from.name(),
                ms(st.ts_ns.saturating_sub(start))
            )
        })
        .collect();
    let _ = write!(s, " · {}", steps.join(", "));
    if t.half_close_bytes > 0 || t.partial_acks > 0 {
        let passive = match t.active_closer {
            Some(Role::Client) => "server",
            _ => "client",
        };
        let _ = write!(
            s,
            " · half-close: {} bytes from {passive} after the first FIN, {} partial ACKs",
            t.half_close_bytes, t.partial_acks
        );
    }
    let _ = write!(s, " · {}", ms(t.duration_ns()));
    s
}

/// JSON of the options one side offered.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct OptionsJson {
    /// MSS option.
    pub mss: Option<u16>,
    /// Window scale shift.
    pub wscale: Option<u8>,
    /// SACK permitted.
    pub sack_perm: bool,
    /// Timestamps option.
    pub timestamps: bool,
}

impl From<SynOptions> for OptionsJson {
    fn from(o: SynOptions) -> Self {
        OptionsJson {
            mss: o.mss,
            wscale: o.wscale,
            sack_perm: o.sack_perm,
            timestamps: o.timestamps,
        }
    }
}

/// JSON of what both sides agreed on.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AgreedJson {
    /// Largest segment towards the server.
    pub mss_to_server: u16,
    /// Largest segment towards the client.
    pub mss_to_client: u16,
    /// Client's window shift, null without scaling.
    pub wscale_client: Option<u8>,
    /// Server's window shift, null without scaling.
    pub wscale_server: Option<u8>,
    /// SACK on.
    pub sack: bool,
    /// Timestamps on.
    pub timestamps: bool,
}

/// JSON of an `analysis` line (schema in the README); fields of the other event are absent.
#[derive(Clone, Debug, Serialize)]
pub struct AnalysisJson {
    /// The time of the segment that ended it; proto `analysis`.
    #[serde(flatten)]
    pub head: LineHead,
    /// `handshake` or `teardown`.
    pub event: &'static str,
    /// Client address and port.
    pub client: String,
    /// Server address and port.
    pub server: String,
    /// The text line's description.
    pub summary: String,
    /// Handshake: `complete`, `reset` or `incomplete`; teardown: `fin` or `rst`.
    pub outcome: &'static str,
    /// Handshake fields.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<HandshakeJson>,
    /// Teardown fields.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<TeardownJson>,
}

/// Handshake-only JSON fields.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeJson {
    /// `client` or `server` for a reset, else null.
    pub reset_by: Option<&'static str>,
    /// SYN to SYN-ACK in µs.
    pub syn_to_synack_us: Option<u64>,
    /// SYN-ACK to ACK in µs.
    pub synack_to_ack_us: Option<u64>,
    /// SYN to ACK (iRTT) in µs.
    pub irtt_us: Option<u64>,
    /// SYNs beyond the first.
    pub syn_retransmissions: u32,
    /// SYN-ACKs beyond the first.
    pub synack_retransmissions: u32,
    /// The client's SYN options.
    pub client_options: Option<OptionsJson>,
    /// The server's SYN-ACK options.
    pub server_options: Option<OptionsJson>,
    /// What both agreed on.
    pub agreed: Option<AgreedJson>,
}

/// One teardown step in JSON.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepJson {
    /// `FIN`, `ACK` or `RST`.
    pub step: &'static str,
    /// `client` or `server`.
    pub from: &'static str,
    /// µs since the first step.
    pub at_us: u64,
}

/// Teardown-only JSON fields.
#[derive(Clone, Debug, Serialize)]
pub struct TeardownJson {
    /// `client` or `server`: the first FIN's sender, null without FIN.
    pub active_closer: Option<&'static str>,
    /// The steps in order.
    pub steps: Vec<StepJson>,
    /// Payload bytes from the passive side after the first FIN.
    pub half_close_bytes: u64,
    /// ACKs from the active closer covering only part of the passive side's data.
    pub partial_acks: u32,
    /// First step to last, µs.
    pub duration_us: u64,
}

/// A handshake's `analysis` line, text or JSON.
pub fn handshake(clock: &Clock, h: &HandshakeReport, json: bool) -> String {
    let summary = handshake_text(h);
    if !json {
        return format!(
            "{} analysis {} ↔ {} handshake: {summary}",
            clock.time_of_day(h.ts_ns),
            h.client,
            h.server
        );
    }
    let (outcome, reset_by) = match h.outcome {
        HandshakeOutcome::Complete => ("complete", None),
        HandshakeOutcome::Reset { by_server } => ("reset", Some(if by_server { "server" } else { "client" })),
        HandshakeOutcome::Incomplete => ("incomplete", None),
    };
    let j = AnalysisJson {
        head: LineHead::new(clock, h.ts_ns, "analysis"),
        event: "handshake",
        client: h.client.to_string(),
        server: h.server.to_string(),
        summary,
        outcome,
        handshake: Some(HandshakeJson {
            reset_by,
            syn_to_synack_us: h.syn_to_synack_ns().map(us),
            synack_to_ack_us: h.synack_to_ack_ns().map(us),
            irtt_us: h.irtt_ns().map(us),
            syn_retransmissions: h.syn_retransmissions,
            synack_retransmissions: h.synack_retransmissions,
            client_options: h.client_options.map(Into::into),
            server_options: h.server_options.map(Into::into),
            agreed: h.agreed().map(|a| AgreedJson {
                mss_to_server: a.mss_to_server,
                mss_to_client: a.mss_to_client,
                wscale_client: a.wscale.map(|w| w.0),
                wscale_server: a.wscale.map(|w| w.1),
                sack: a.sack,
                timestamps: a.timestamps,
            }),
        }),
        teardown: None,
    };
    json_text(serde_json::to_value(j))
}

/// A teardown's `analysis` line, text or JSON.
pub fn teardown(clock: &Clock, t: &TeardownReport, json: bool) -> String {
    let summary = teardown_text(t);
    if !json {
        return format!(
            "{} analysis {} ↔ {} teardown: {summary}",
            clock.time_of_day(t.ts_ns),
            t.client,
            t.server
        );
    }
    let start = t.steps().first().map(|s| s.ts_ns).unwrap_or(t.ts_ns);
    let j = AnalysisJson {
        head: LineHead::new(clock, t.ts_ns, "analysis"),
        event: "teardown",
        client: t.client.to_string(),
        server: t.server.to_string(),
        summary,
        outcome: match t.kind {
            TeardownKind::Fin => "fin",
            TeardownKind::Reset => "rst",
        },
        handshake: None,
        teardown: Some(TeardownJson {
            active_closer: t.active_closer.map(Role::name),
            steps: t
                .steps()
                .iter()
                .map(|s| StepJson {
                    step: s.kind.name(),
                    from: s.from.name(),
                    at_us: us(s.ts_ns.saturating_sub(start)),
                })
                .collect(),
            half_close_bytes: t.half_close_bytes,
            partial_acks: t.partial_acks,
            duration_us: us(t.duration_ns()),
        }),
    };
    json_text(serde_json::to_value(j))
}
