//! Differential tests of observer's TCP analysis against tshark 4.0 on real traffic.
//!
//! Each scenario runs real TCP between two namespaces joined by a veth pair (its own subnet, so the scenarios run
//! in parallel). The agent watches namespace a's veth with `--json --write`, and tshark captures the same
//! interface. Two comparisons, packet by packet:
//! - live: tshark's own capture against the agent's JSON. Each direction is seen in the same order by both, but
//!   the agent stamps a frame at its TC hook and tshark at the packet tap (ingress: tap before TC, egress: TC
//!   before tap), so packets crossing within microseconds may be listed in another order across directions.
//!   Packets are matched by (direction, absolute seq, absolute ack, flags, length, TSval); every per-packet field
//!   must be equal, and expert flags (and with them the Info prefix) may differ only for a packet whose place
//!   relative to the other direction differs between the two views.
//! - exact: `tshark -r` on the pcapng the agent wrote: the same packets in the agent's order, so every field, the
//!   expert flags, the Dup ACK frame numbers and the full Info must be equal frame by frame.
//!
//! Linux never sends Wireshark's one-byte zero window probe: its persist timer sends `seq = snd_una − 1` without
//! data (`tcp_write_wakeup` → `tcp_xmit_probe_skb`), which tshark names `[TCP Keep-Alive]`, and the receiver's
//! answer carries a zero window, so it is no `[TCP Keep-Alive ACK]` either. The zero window scenario asserts that
//! form, and sends the one-byte probe other stacks use itself (`traffic::zero_window_probe`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    agent::Agent,
    netns::{self, Pair},
    require, traffic,
    tshark::{self, Row, Tshark},
};

/// Output silence after which a capture is taken as complete (when both sides also agree on the count).
const QUIET: Duration = Duration::from_millis(400);

/// The fields asked of tshark for every packet.
const FIELDS: [&str; 39] = [
    "frame.number",
    "frame.len",
    "ip.src",
    "ipv6.src",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq",
    "tcp.seq_raw",
    "tcp.ack",
    "tcp.ack_raw",
    "tcp.window_size",
    "tcp.len",
    "tcp.flags",
    "tcp.options.mss_val",
    "tcp.options.wscale.multiplier",
    "tcp.options.sack_perm",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
    "tcp.options.sack_le",
    "tcp.options.sack_re",
    "tcp.analysis.flags",
    "tcp.analysis.retransmission",
    "tcp.analysis.fast_retransmission",
    "tcp.analysis.spurious_retransmission",
    "tcp.analysis.out_of_order",
    "tcp.analysis.duplicate_ack",
    "tcp.analysis.duplicate_ack_num",
    "tcp.analysis.duplicate_ack_frame",
    "tcp.analysis.zero_window",
    "tcp.analysis.zero_window_probe",
    "tcp.analysis.zero_window_probe_ack",
    "tcp.analysis.window_full",
    "tcp.analysis.window_update",
    "tcp.analysis.keep_alive",
    "tcp.analysis.keep_alive_ack",
    "tcp.analysis.lost_segment",
    "tcp.analysis.ack_lost_segment",
    "tcp.analysis.reused_ports",
    "_ws.col.Info",
];

/// tshark's expert analysis fields, each with the Info prefix (and `expert` entry) that names it.
const KINDS: [(&str, &str); 16] = [
    ("tcp.analysis.retransmission", "TCP Retransmission"),
    ("tcp.analysis.fast_retransmission", "TCP Fast Retransmission"),
    ("tcp.analysis.spurious_retransmission", "TCP Spurious Retransmission"),
    ("tcp.analysis.out_of_order", "TCP Out-Of-Order"),
    ("tcp.analysis.duplicate_ack", "TCP Dup ACK"),
    ("tcp.analysis.zero_window", "TCP ZeroWindow"),
    ("tcp.analysis.zero_window_probe", "TCP ZeroWindowProbe"),
    ("tcp.analysis.zero_window_probe_ack", "TCP ZeroWindowProbeAck"),
    ("tcp.analysis.window_full", "TCP Window Full"),
    ("tcp.analysis.window_update", "TCP Window Update"),
    ("tcp.analysis.keep_alive", "TCP Keep-Alive"),
    ("tcp.analysis.keep_alive_ack", "TCP Keep-Alive ACK"),
    ("tcp.analysis.lost_segment", "TCP Previous segment not captured"),
    ("tcp.analysis.ack_lost_segment", "TCP ACKed unseen segment"),
    ("tcp.analysis.reused_ports", "TCP Port numbers reused"),
    ("tcp.analysis.flags", "(any)"),
];

/// TCP flag bits by Wireshark's names.
const FLAG_BITS: [(&str, u8); 8] = [
    ("FIN", 0x01),
    ("SYN", 0x02),
    ("RST", 0x04),
    ("PSH", 0x08),
    ("ACK", 0x10),
    ("URG", 0x20),
    ("ECE", 0x40),
    ("CWR", 0x80),
];

// ---------------------------------------------------------------------------------------------------------------
// One segment, from either side

/// What identifies a packet in both captures: direction, absolute seq and ack, flags, payload length, TSval.
type Key = (bool, u32, Option<u32>, u8, u32, Option<u32>, String, String);

/// A TCP segment as observer or tshark reports it.
#[derive(Clone, Debug, Default)]
struct Seg {
    /// Frame number (observer's `frame`, tshark's `frame.number`); `None` when observer printed none.
    frame: Option<u64>,
    /// Sent from namespace a (observer's `out`).
    out: bool,
    seq_abs: u32,
    ack_abs: Option<u32>,
    flags: u8,
    len: u32,
    /// Relative numbers, calculated window and options, compared one by one.
    fields: BTreeMap<&'static str, String>,
    /// The expert texts in Info order, e.g. `TCP Dup ACK 5#1`.
    expert: Vec<String>,
    /// The whole Info column.
    info: String,
}

impl Seg {
    fn key(&self) -> Key {
        let tsval = self.fields.get("tsval").and_then(|v| v.parse().ok());
        // A burst of ACKs can repeat seq, ack and TSval; their windows and SACK blocks tell them apart.
        let field = |name: &str| self.fields.get(name).cloned().unwrap_or_default();
        (
            self.out,
            self.seq_abs,
            self.ack_abs,
            self.flags,
            self.len,
            tsval,
            field("win"),
            field("sack"),
        )
    }

    /// A short description for reports.
    fn show(&self) -> String {
        format!(
            "frame {} {} {}",
            self.frame.map_or("?".to_owned(), |f| f.to_string()),
            if self.out { "out" } else { "in " },
            self.info
        )
    }
}

/// The bracketed prefixes of an Info column (without brackets) and the rest.
fn split_info(info: &str) -> (Vec<String>, &str) {
    let mut s = info;
    let mut expert = Vec::new();
    while let Some((inner, rest)) = s.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        expert.push(inner.to_owned());
        s = rest;
    }
    (expert, s)
}

/// Option values as strings, `-` when absent, so that both sides compare as text.
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

/// A segment from one of tshark's rows; `a_addr` is namespace a's address.
fn from_row(row: &Row, a_addr: &str) -> Seg {
    let num = |f| row.num(f).map(|v| v as u32);
    let flags = row.num("tcp.flags").unwrap_or(0) as u8;
    let has_ack = flags & 0x10 != 0;
    let sack: Vec<String> = row
        .nums("tcp.options.sack_le")
        .iter()
        .zip(row.nums("tcp.options.sack_re"))
        .map(|(l, r)| format!("{l}-{r}"))
        .collect();
    let info = row.get("_ws.col.Info").to_owned();
    let fields = BTreeMap::from([
        ("seq", opt(num("tcp.seq"))),
        ("ack", opt(num("tcp.ack").filter(|_| has_ack))),
        ("win", opt(num("tcp.window_size"))),
        ("mss", opt(num("tcp.options.mss_val"))),
        ("ws", opt(num("tcp.options.wscale.multiplier"))),
        ("sack_perm", row.has("tcp.options.sack_perm").to_string()),
        ("tsval", opt(num("tcp.options.timestamp.tsval"))),
        ("tsecr", opt(num("tcp.options.timestamp.tsecr"))),
        ("sack", sack.join(",")),
        ("frame_len", opt(num("frame.len"))),
    ]);
    Seg {
        frame: row.num("frame.number"),
        out: row.get("ip.src") == a_addr || row.get("ipv6.src") == ipv6_of(a_addr),
        seq_abs: num("tcp.seq_raw").unwrap_or(0),
        ack_abs: num("tcp.ack_raw").filter(|_| has_ack),
        flags,
        len: num("tcp.len").unwrap_or(0),
        fields,
        expert: split_info(&info).0,
        info,
    }
}

/// A segment from one of observer's TCP JSON objects.
fn from_json(v: &Value) -> Seg {
    let num = |k: &str| v[k].as_u64().map(|n| n as u32);
    let flags = v["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| FLAG_BITS.iter().find(|(n, _)| Some(*n) == f.as_str()).map(|(_, b)| b))
        .fold(0, |acc, b| acc | b);
    let sack: Vec<String> = v["sack"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| format!("{}-{}", b["sle"], b["sre"]))
        .collect();
    let fields = BTreeMap::from([
        ("seq", opt(num("seq"))),
        ("ack", opt(num("ack"))),
        ("win", opt(num("win"))),
        ("mss", opt(num("mss"))),
        ("ws", opt(num("wscale").map(|s| 1u64 << s.min(14)))),
        ("sack_perm", (v["sack_perm"] == true).to_string()),
        ("tsval", opt(num("tsval"))),
        ("tsecr", opt(num("tsecr"))),
        ("sack", sack.join(",")),
        ("frame_len", opt(num("len"))),
    ]);
    Seg {
        frame: v["frame"].as_u64(),
        out: v["direction"] == "out",
        seq_abs: num("seq_abs").unwrap_or(0),
        ack_abs: num("ack_abs"),
        flags,
        len: num("payload_len").unwrap_or(0),
        fields,
        expert: v["expert"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect(),
        info: v["summary"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The expert kind of an expert text (`TCP Dup ACK 5#1` is `TCP Dup ACK`).
fn kind(text: &str) -> &str {
    if text.starts_with("TCP Dup ACK ") {
        "TCP Dup ACK"
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Comparison

/// Disagreements of one comparison, grouped by class, with the first examples of each.
#[derive(Default)]
struct Report {
    classes: BTreeMap<String, (usize, Vec<String>)>,
}

impl Report {
    fn add(&mut self, class: String, example: String) {
        let entry = self.classes.entry(class).or_default();
        entry.0 += 1;
        if entry.1.len() < 4 {
            entry.1.push(example);
        }
    }

    fn total(&self) -> usize {
        self.classes.values().map(|c| c.0).sum()
    }

    fn render(&self, title: &str, out: &mut String) {
        for (class, (n, examples)) in &self.classes {
            let _ = writeln!(out, "  {title}: {class}: {n} packet(s)");
            for e in examples {
                let _ = writeln!(out, "      {e}");
            }
        }
    }
}

/// Compares the per-packet fields of a matched pair (everything but expert flags and Info).
fn compare_fields(ours: &Seg, theirs: &Seg, report: &mut Report, title: &str) {
    for (name, t) in &theirs.fields {
        let o = ours.fields.get(name).map_or("-", String::as_str);
        if o != t {
            report.add(
                format!("{title} field {name}"),
                format!(
                    "ours {o:?} tshark {t:?}: ours {} | tshark {}",
                    ours.show(),
                    theirs.show()
                ),
            );
        }
    }
}

/// Per-kind counts of expert flags both sides gave the same packet.
type Tally = BTreeMap<String, usize>;

/// Live comparison: tshark's capture against observer's output, matched by [`Key`].
fn compare_live(
    ours: &[Seg],
    theirs: &[Seg],
    report: &mut Report,
    explained: &mut Report,
    tally: &mut Tally,
) -> (usize, usize) {
    // Packets of one direction handled on two CPUs at once can pass the tap and the TC hook in another order;
    // which packets were seen is checked below (each must be matched), their order is only counted here.
    for out in [true, false] {
        let o: Vec<Key> = ours.iter().filter(|s| s.out == out).map(Seg::key).collect();
        let t: Vec<Key> = theirs.iter().filter(|s| s.out == out).map(Seg::key).collect();
        let moved = o.iter().zip(&t).filter(|(a, b)| a != b).count();
        if moved > 0 {
            explained.add(
                format!(
                    "live: {} packets at another place in their direction's order (two CPUs)",
                    if out { "outgoing" } else { "incoming" }
                ),
                format!("{moved} of {} positions differ", o.len()),
            );
        }
    }
    // The k-th packet with a key in one list is the k-th with that key in the other.
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, s) in ours.iter().enumerate().rev() {
        by_key.entry(s.key()).or_default().push(i);
    }
    let matched: Vec<Option<usize>> = theirs
        .iter()
        .map(|s| by_key.get_mut(&s.key()).and_then(Vec::pop))
        .collect();
    for (t, m) in theirs.iter().zip(&matched) {
        if m.is_none() {
            report.add("live: only tshark saw".into(), t.show());
        }
    }
    for rest in by_key.values().flatten() {
        report.add("live: only observer saw".into(), ours[*rest].show());
    }
    // tshark frame number -> observer frame number, for Dup ACK references.
    let frames: HashMap<u64, Option<u64>> = theirs
        .iter()
        .zip(&matched)
        .filter_map(|(t, m)| Some((t.frame?, m.and_then(|i| ours[i].frame))))
        .collect();
    let renumber = |text: &str| -> String {
        let Some((frame, n)) = text.strip_prefix("TCP Dup ACK ").and_then(|r| r.split_once('#')) else {
            return text.to_owned();
        };
        let ours = frame.parse().ok().and_then(|f: u64| frames.get(&f).copied().flatten());
        format!("TCP Dup ACK {}#{n}", opt(ours))
    };
    // Opposite-direction packets before each packet, in either order.
    let before = |list: &[Seg]| -> Vec<usize> {
        let mut seen = [0usize; 2];
        list.iter()
            .map(|s| {
                let n = seen[usize::from(!s.out)];
                seen[usize::from(s.out)] += 1;
                n
            })
            .collect()
    };
    let (ours_before, theirs_before) = (before(ours), before(theirs));
    let (mut compared, mut reordered) = (0, 0);
    for (ti, (t, m)) in theirs.iter().zip(&matched).enumerate() {
        let Some(oi) = *m else { continue };
        let o = &ours[oi];
        compared += 1;
        compare_fields(o, t, report, "live");
        let expected: Vec<String> = t.expert.iter().map(|e| renumber(e)).collect();
        let (_, o_rest) = split_info(&o.info);
        let (_, t_rest) = split_info(&t.info);
        if o_rest != t_rest {
            report.add(
                "live: Info after the expert prefixes".into(),
                format!("ours {} | tshark {}", o.show(), t.show()),
            );
        }
        if o.expert == expected {
            for e in &o.expert {
                *tally.entry(kind(e).to_owned()).or_default() += 1;
            }
            continue;
        }
        if ours_before[oi] != theirs_before[ti] || !same_recent(ours, oi, theirs, ti) {
            // The packets before this one came in another order in the two views (the other direction at
            // another point, or one direction's packets on two CPUs): tshark's flags describe tshark's order,
            // ours ours. The exact comparison, on one order, allows no such difference.
            reordered += 1;
            explained.add(
                format!(
                    "live, the packets before it in another order: expert ours {:?} tshark {:?}",
                    o.expert, expected
                ),
                format!("ours {} | tshark {}", o.show(), t.show()),
            );
            continue;
        }
        if timing_flip(&o.expert, &expected) {
            // Wireshark calls old data Out-Of-Order when it comes less than the iRTT after the segment that
            // reached the highest sequence number, else a Retransmission: a rule on capture times. tshark stamps
            // at the packet tap and observer at the TC hook, a few microseconds apart and not by a constant, and
            // on a veth the iRTT is tens of microseconds. The exact comparison (tshark on our file, with our
            // times) allows no flip.
            explained.add(
                format!(
                    "live, capture times either side of the iRTT: ours {:?} tshark {:?}",
                    o.expert, expected
                ),
                format!("ours {} | tshark {}", o.show(), t.show()),
            );
            continue;
        }
        report.add(
            format!("live: expert ours {:?} tshark {:?}", kinds(&o.expert), kinds(&expected)),
            format!(
                "ours {:?} tshark {:?}: ours {} | tshark {}",
                o.expert,
                expected,
                o.show(),
                t.show()
            ),
        );
    }
    (compared, reordered)
}

/// How many packets before a packet must be the same, in the same order, in both views for their flags on it to
/// be comparable: Wireshark's flags read the state the recent packets left (next and highest sequence number,
/// last ACK and window, dup ACK count).
const RECENT: usize = 16;

/// Whether the [`RECENT`] packets before ours[oi] and theirs[ti] are the same packets in the same order.
fn same_recent(ours: &[Seg], oi: usize, theirs: &[Seg], ti: usize) -> bool {
    let n = RECENT.min(oi.max(ti));
    oi >= n && ti >= n && (1..=n).all(|k| ours[oi - k].key() == theirs[ti - k].key())
}

/// Whether two flag lists differ only in Out-Of-Order against Retransmission, a choice Wireshark makes by time.
fn timing_flip(ours: &[String], theirs: &[String]) -> bool {
    const PAIR: [&str; 2] = ["TCP Out-Of-Order", "TCP Retransmission"];
    let (o, t) = (kinds(ours), kinds(theirs));
    o.len() == t.len()
        && o.iter()
            .zip(&t)
            .all(|(a, b)| a == b || (PAIR.contains(a) && PAIR.contains(b)))
}

fn kinds(expert: &[String]) -> Vec<&str> {
    expert.iter().map(|e| kind(e)).collect()
}

/// Exact comparison: `tshark -r` on observer's own pcapng, frame by frame.
fn compare_exact(
    ours: &[Seg],
    arp: &[(Option<u64>, String)],
    file: &[Row],
    a_addr: &str,
    report: &mut Report,
) -> usize {
    let by_frame: HashMap<u64, &Row> = file.iter().filter_map(|r| Some((r.num("frame.number")?, r))).collect();
    if file.len() != ours.len() + arp.len() {
        report.add(
            "exact: frame count".into(),
            format!(
                "the pcapng holds {} frames, observer printed {} TCP and {} ARP",
                file.len(),
                ours.len(),
                arp.len()
            ),
        );
    }
    for (frame, summary) in arp {
        match frame.and_then(|f| by_frame.get(&f)) {
            Some(row) if row.get("_ws.col.Info") == summary => {}
            Some(row) => report.add(
                "exact: ARP Info".into(),
                format!("frame {frame:?}: ours {summary:?} tshark {:?}", row.get("_ws.col.Info")),
            ),
            None => report.add("exact: ARP frame missing".into(), format!("{frame:?} {summary}")),
        }
    }
    let mut compared = 0;
    for o in ours {
        let Some(row) = o.frame.and_then(|f| by_frame.get(&f)) else {
            report.add("exact: no frame of that number in the pcapng".into(), o.show());
            continue;
        };
        let t = from_row(row, a_addr);
        compared += 1;
        if t.key() != o.key() {
            report.add(
                "exact: another packet at that frame number".into(),
                format!("ours {} | tshark {}", o.show(), t.show()),
            );
            continue;
        }
        compare_fields(o, &t, report, "exact");
        if o.expert != t.expert {
            report.add(
                format!(
                    "exact: expert ours {:?} tshark {:?}",
                    kinds(&o.expert),
                    kinds(&t.expert)
                ),
                format!("ours {} | tshark {}", o.show(), t.show()),
            );
        } else if o.info != t.info {
            report.add("exact: Info".into(), format!("ours {} | tshark {}", o.show(), t.show()));
        }
    }
    compared
}

// ---------------------------------------------------------------------------------------------------------------
// Running a scenario

/// A file removed when the test ends, also when it fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The number of lines in `lines` that are TCP objects (observer's JSON) about `port`.
fn tcp_lines(lines: &[String], port: u16) -> usize {
    lines.iter().filter(|l| tcp_object(l, port).is_some()).count()
}

/// The JSON object of a TCP segment from or to `port`, or None for any other line.
fn tcp_object(line: &str, port: u16) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    (v["proto"] == "tcp" && (v["sport"] == port || v["dport"] == port)).then_some(v)
}

/// Runs `traffic` on a fresh pair with the agent and tshark watching a's veth, compares, prints the tally, and
/// returns tshark's own count of packets per expert kind (live capture) for the scenario's own assertions.
fn scenario(name: &str, subnet: u8, port: u16, traffic: impl FnOnce(&Pair)) -> Option<Tally> {
    if !require::root(name) || !require::tool(name, "tshark") || !require::tool(name, "nft") {
        return None;
    }
    let pair = Pair::new(&format!("an{subnet}"), subnet).expect("namespaces");
    let pcapng = TempFile(std::env::temp_dir().join(format!("observer-{name}-{}.pcapng", std::process::id())));
    let port_arg = port.to_string();
    let pcapng_arg = pcapng.0.to_str().expect("temp path").to_owned();
    let mut agent = Agent::start(
        &pair.a,
        &[
            "--iface",
            &pair.a_if,
            "--json",
            "--port",
            &port_arg,
            "--write",
            &pcapng_arg,
        ],
    )
    .expect("starting observer");
    let mut args: Vec<String> = vec!["-f".into(), format!("tcp port {port}")];
    args.extend(tshark::TCP_PREFS.map(str::to_owned));
    args.extend(tshark::field_args(&FIELDS));
    let mut capture = Tshark::start(&pair.a, &pair.a_if, &args).expect("starting tshark");

    traffic(&pair);

    // Both captures are complete once neither prints more and they hold as many packets.
    let (mut ours_lines, mut theirs_lines) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + tests::wait();
    loop {
        let before = (ours_lines.len(), theirs_lines.len());
        agent.wait_for(|_| false, QUIET, &mut ours_lines);
        capture.read_for(QUIET, &mut theirs_lines);
        let quiet = (ours_lines.len(), theirs_lines.len()) == before;
        if (quiet && tcp_lines(&ours_lines, port) == theirs_lines.len()) || Instant::now() > deadline {
            break;
        }
    }
    let f = agent.stop(libc::SIGINT).expect("stopping observer");
    ours_lines.extend(f.stdout);
    theirs_lines.extend(capture.stop());
    assert_eq!(f.code, Some(0), "observer failed: {:#?}", f.stderr);
    assert!(
        f.stderr.iter().any(|l| l == "dropped records (ring buffer full): 0"),
        "observer lost records, the comparison would be meaningless: {:#?}",
        f.stderr
    );

    let (mut ours, mut arp) = (Vec::new(), Vec::new());
    for line in &ours_lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            panic!("observer printed a line that is not JSON: {line:?}");
        };
        if v["proto"] == "arp" {
            arp.push((
                v["frame"].as_u64(),
                v["summary"].as_str().unwrap_or_default().to_owned(),
            ));
        } else if tcp_object(line, port).is_some() {
            ours.push(from_json(&v));
        }
    }
    let rows = tshark::rows(&FIELDS, &theirs_lines).expect("tshark's fields");
    let theirs: Vec<Seg> = rows.iter().map(|r| from_row(r, &pair.a_addr)).collect();

    let (mut report, mut explained) = (Report::default(), Report::default());
    let mut tally = Tally::new();
    let (live, reordered) = compare_live(&ours, &theirs, &mut report, &mut explained, &mut tally);
    let exact = if pcapng.0.is_file() {
        match tshark::read(&pcapng.0, &tshark::field_args(&FIELDS)).and_then(|l| tshark::rows(&FIELDS, &l)) {
            Ok(file) => compare_exact(&ours, &arp, &file, &pair.a_addr, &mut report),
            Err(e) => {
                report.add("exact: tshark cannot read observer's pcapng".into(), format!("{e:#}"));
                0
            }
        }
    } else {
        report.add(
            "exact: no pcapng".into(),
            format!("observer --write {} wrote nothing", pcapng.0.display()),
        );
        0
    };

    let mut own = Tally::new();
    for row in &rows {
        let fields = KINDS.iter().map(|(f, _)| *f).chain(["tcp.options.sack_le"]);
        for field in fields.filter(|f| row.has(f)) {
            *own.entry(field.to_owned()).or_default() += 1;
        }
    }
    let mut text = format!(
        "{name}: {} packets (tshark), {} (observer); compared live {live} ({reordered} with flags after packets in another \
         order), exact {exact}\n  tshark's expert fields: {own:?}\n  expert flags in both (live): \
         {tally:?}\n",
        theirs.len(),
        ours.len()
    );
    explained.render(name, &mut text);
    report.render(name, &mut text);
    eprint!("{text}");
    assert!(
        theirs.len() >= 10 && !ours.is_empty(),
        "{name}: too little traffic captured:\n{text}"
    );
    assert_eq!(report.total(), 0, "{name}: observer and tshark disagree:\n{text}");
    Some(own)
}

/// Asserts that tshark's own view of a scenario holds every expert field in `fields`, else the scenario did not
/// produce what it is about.
fn assert_produced(name: &str, own: &Tally, fields: &[&str]) {
    let missing: Vec<&&str> = fields.iter().filter(|f| !own.contains_key(**f)).collect();
    assert!(
        missing.is_empty(),
        "{name}: the scenario is broken, tshark saw no {missing:?} (it saw {own:?})"
    );
}

/// The IPv6 address a scenario gives the interface that has IPv4 address `v4` (10.S.0.N → fd00:S::N).
fn ipv6_of(v4: &str) -> String {
    let o: Vec<&str> = v4.split('.').collect();
    match o.as_slice() {
        [_, s, _, n] => format!("fd00:{s}::{n}"),
        _ => String::new(),
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// Reads exactly `n` bytes or fails.
fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)
}

/// Reads until the peer closes; returns the byte count.
fn read_to_end(s: &mut TcpStream) -> std::io::Result<usize> {
    let (mut total, mut chunk) = (0, [0u8; 65536]);
    loop {
        match s.read(&mut chunk)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios

/// A plain connection: handshake, requests and larger replies both ways, teardown.
#[test]
fn plain_connection() {
    const PORT: u16 = 46001;
    scenario("plain_connection", 234, PORT, |pair| {
        let listener = traffic::listen(&pair.b, addr(&pair.b_addr, PORT), None).expect("listener");
        let server = thread::spawn(move || -> std::io::Result<()> {
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(tests::wait()))?;
            for _ in 0..5 {
                read_n(&mut c, 100)?;
                c.write_all(&[b'r'; 3000])?;
            }
            read_to_end(&mut c).map(drop)
        });
        let mut c = traffic::connect(&pair.a, None, addr(&pair.b_addr, PORT)).expect("connect");
        c.set_read_timeout(Some(tests::wait())).expect("read timeout");
        for _ in 0..5 {
            c.write_all(&[b'q'; 100]).expect("request");
            read_n(&mut c, 3000).expect("reply");
        }
        drop(c);
        server.join().expect("server thread").expect("server");
    });
}

/// The plain connection over IPv6: the same fields from IPv6 headers (and, in the file, IPv6 header bytes).
#[test]
fn plain_connection_over_ipv6() {
    const PORT: u16 = 46006;
    scenario("plain_connection_over_ipv6", 242, PORT, |pair| {
        let (a6, b6) = (ipv6_of(&pair.a_addr), ipv6_of(&pair.b_addr));
        pair.add_ipv6(&a6, &b6).expect("IPv6 addresses");
        let server: SocketAddr = format!("[{b6}]:{PORT}").parse().expect("address");
        let listener = pair
            .b
            .enter(move || TcpListener::bind(server))
            .expect("b")
            .expect("listener");
        let served = thread::spawn(move || -> std::io::Result<()> {
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(tests::wait()))?;
            read_n(&mut c, 100)?;
            c.write_all(&[b'r'; 3000])?;
            read_to_end(&mut c).map(drop)
        });
        let mut c = pair
            .a
            .enter(move || TcpStream::connect(server))
            .expect("a")
            .expect("connect");
        c.set_read_timeout(Some(tests::wait())).expect("read timeout");
        c.write_all(&[b'q'; 100]).expect("request");
        read_n(&mut c, 3000).expect("reply");
        drop(c);
        served.join().expect("server thread").expect("server");
    });
}

/// A bulk transfer from a to b with a share of a's data segments lost on the way: retransmissions, fast
/// retransmissions, dup ACKs, SACK blocks.
///
/// The segments are dropped by nftables in b's prerouting, after both captures in a have seen them. A drop in
/// a's own output path (or its netdev egress hook) is no loss: the error goes back to TCP, which sends the same
/// segment again at once, so the wire never shows a gap or a retransmission.
#[test]
fn bulk_transfer_with_loss() {
    const NAME: &str = "bulk_transfer_with_loss";
    const PORT: u16 = 46002;
    const SIZE: usize = 2 << 20;
    let own = scenario(NAME, 235, PORT, |pair| {
        // MTU-sized segments, as on a real link. Turning TSO/GSO off with ethtool would not do: TCP still builds
        // GSO packets, which TC egress sees whole and the packet tap only after software segmentation.
        pair.a
            .ip(&["link", "set", "dev", &pair.a_if, "gso_max_segs", "1"])
            .expect("gso_max_segs");
        let nft = |args: &[&str]| netns::run(pair.b.command("nft").args(args)).expect("nft");
        nft(&["add", "table", "inet", "obs_loss"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "obs_loss",
            "in",
            "{ type filter hook prerouting priority 0 ; }",
        ]);
        let rule = format!("tcp dport {PORT} ip length > 100 numgen random mod 25 0 drop");
        let mut args = vec!["add", "rule", "inet", "obs_loss", "in"];
        args.extend(rule.split(' '));
        nft(&args);

        let listener = traffic::listen(&pair.b, addr(&pair.b_addr, PORT), None).expect("listener");
        let server = thread::spawn(move || -> std::io::Result<usize> {
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(tests::wait()))?;
            let mut got = 0;
            while got < SIZE {
                let mut chunk = [0u8; 65536];
                match c.read(&mut chunk)? {
                    0 => break,
                    n => got += n,
                }
            }
            c.write_all(b"done")?;
            read_to_end(&mut c)?;
            Ok(got)
        });
        let mut c = traffic::connect(&pair.a, None, addr(&pair.b_addr, PORT)).expect("connect");
        c.set_read_timeout(Some(tests::wait())).expect("read timeout");
        c.write_all(&vec![b'd'; SIZE]).expect("bulk write");
        read_n(&mut c, 4).expect("the server's answer");
        drop(c);
        assert_eq!(server.join().expect("server thread").expect("server"), SIZE);
    });
    if let Some(own) = own {
        assert_produced(NAME, &own, &["tcp.analysis.duplicate_ack", "tcp.options.sack_le"]);
        // Whether Wireshark calls a resent segment a fast retransmission depends on timing (within 20 ms of two
        // dup ACKs, at the peer's ACK), and random loss on a veth does not always produce one; some retransmission
        // it must be. Every kind that shows up is compared above.
        let resent = ["tcp.analysis.retransmission", "tcp.analysis.fast_retransmission"];
        assert!(
            resent.iter().any(|f| own.contains_key(*f)),
            "{NAME}: the scenario is broken, tshark saw no retransmission (it saw {own:?})"
        );
    }
}

/// A receiver with a small buffer that stops reading while the sender keeps writing: window full, zero window,
/// the sender's persist probes (keep-alives in tshark's terms, see the module comment), and the one-byte zero
/// window probe other stacks send with the receiver's answer; then it reads again: window update.
#[test]
fn receiver_stops_reading() {
    const NAME: &str = "receiver_stops_reading";
    const PORT: u16 = 46003;
    const SIZE: usize = 200_000;
    let own = scenario(NAME, 236, PORT, |pair| {
        let server_addr = addr(&pair.b_addr, PORT);
        let listener = traffic::listen(&pair.b, server_addr, Some(4096)).expect("listener");
        let server = thread::spawn(move || -> std::io::Result<usize> {
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(tests::wait()))?;
            // Long enough for the window to close, the persist timer to probe (200 ms, then backing off) and the
            // one-byte probe below.
            thread::sleep(Duration::from_millis(2000));
            read_to_end(&mut c)
        });
        let mut c = traffic::connect(&pair.a, None, server_addr).expect("connect");
        let writer = thread::spawn(move || c.write_all(&vec![b'z'; SIZE]));
        traffic::zero_window_probe(&pair.a, &pair.a_if, server_addr, Duration::from_millis(1500))
            .expect("zero window probe");
        writer.join().expect("writer thread").expect("write");
        assert_eq!(server.join().expect("server thread").expect("server"), SIZE);
    });
    if let Some(own) = own {
        assert_produced(
            NAME,
            &own,
            &[
                "tcp.analysis.window_full",
                "tcp.analysis.zero_window",
                "tcp.analysis.keep_alive",
                "tcp.analysis.zero_window_probe",
                "tcp.analysis.zero_window_probe_ack",
                "tcp.analysis.window_update",
            ],
        );
    }
}

/// An idle connection with keep-alives every second: keep-alive and its ACK.
#[test]
fn keep_alives() {
    const NAME: &str = "keep_alives";
    const PORT: u16 = 46004;
    let own = scenario(NAME, 237, PORT, |pair| {
        let listener = traffic::listen(&pair.b, addr(&pair.b_addr, PORT), None).expect("listener");
        let server = thread::spawn(move || -> std::io::Result<usize> {
            let (mut c, _) = listener.accept()?;
            c.set_read_timeout(Some(tests::wait()))?;
            read_n(&mut c, 10)?;
            c.write_all(b"hello")?;
            read_to_end(&mut c)
        });
        let mut c = traffic::connect(&pair.a, None, addr(&pair.b_addr, PORT)).expect("connect");
        traffic::keepalive(&c, 1, 1).expect("keep-alive options");
        c.set_read_timeout(Some(tests::wait())).expect("read timeout");
        c.write_all(b"0123456789").expect("write");
        read_n(&mut c, 5).expect("read");
        // Idle: the first probe after 1 s, the next a second later.
        thread::sleep(Duration::from_millis(2600));
        drop(c);
        server.join().expect("server thread").expect("server");
    });
    if let Some(own) = own {
        assert_produced(NAME, &own, &["tcp.analysis.keep_alive", "tcp.analysis.keep_alive_ack"]);
    }
}

/// The same 4-tuple twice: the first connection ends in an RST (SO_LINGER 0), the second binds the same client
/// port: tshark's "TCP Port numbers reused" on its SYN.
#[test]
fn port_reused() {
    const NAME: &str = "port_reused";
    const PORT: u16 = 46005;
    const CLIENT_PORT: u16 = 46105;
    let own = scenario(NAME, 238, PORT, |pair| {
        let listener = traffic::listen(&pair.b, addr(&pair.b_addr, PORT), None).expect("listener");
        let server = thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..2 {
                let (mut c, _) = listener.accept()?;
                c.set_read_timeout(Some(tests::wait()))?;
                read_n(&mut c, 3)?;
                c.write_all(b"ok")?;
                // The first client resets, the second closes.
                let _ = read_to_end(&mut c);
            }
            Ok(())
        });
        let local = addr(&pair.a_addr, CLIENT_PORT);
        for linger in [true, false] {
            let mut c = traffic::connect(&pair.a, Some(local), addr(&pair.b_addr, PORT)).expect("connect");
            c.set_read_timeout(Some(tests::wait())).expect("read timeout");
            c.write_all(b"abc").expect("write");
            read_n(&mut c, 2).expect("read");
            if linger {
                traffic::linger_zero(&c).expect("SO_LINGER");
            }
            drop(c);
        }
        server.join().expect("server thread").expect("server");
    });
    if let Some(own) = own {
        assert_produced(NAME, &own, &["tcp.analysis.reused_ports"]);
    }
}
