//! The demo (`cargo xtask demo`, the tests crate's `demo` binary) end to end: every act prints the lines that
//! tell its part of the story, it finishes within a minute, and it leaves no namespace behind.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tests::{agent, netns, require, tshark};

/// The lines printed under each `== ` caption (the six acts, the exit report, the closing line), in order.
fn acts(stdout: &str) -> Vec<Vec<&str>> {
    let mut acts: Vec<Vec<&str>> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with("== ") {
            acts.push(Vec::new());
        } else if let Some(act) = acts.last_mut() {
            act.push(line);
        }
    }
    acts
}

/// The first line of `lines` containing every one of `parts`.
fn find<'a>(lines: &[&'a str], parts: &[&str]) -> Option<&'a str> {
    lines.iter().copied().find(|l| parts.iter().all(|p| l.contains(p)))
}

/// The number after `key` on `line`.
fn value(line: &str, key: &str) -> Option<u64> {
    line.split(' ').find_map(|t| t.strip_prefix(key)?.parse().ok())
}

/// The rows of the `netstat -ant`-form table printed after `header` (up to the next `$ ` or `== ` line), sorted.
fn table<'a>(act: &[&'a str], header: &str) -> Vec<&'a str> {
    let mut rows: Vec<&str> = act
        .iter()
        .skip_while(|l| **l != header)
        .skip(1)
        .take_while(|l| !l.starts_with("$ ") && !l.starts_with("== "))
        .copied()
        .filter(|l| l.starts_with("tcp"))
        .collect();
    rows.sort_unstable();
    rows
}

#[test]
fn demo_tells_every_act_and_leaves_nothing_behind() {
    const NAME: &str = "demo_tells_every_act_and_leaves_nothing_behind";
    if !require::root(NAME)
        || !["ip", "nft", "ping", "netstat", "sysctl", "tshark"]
            .iter()
            .all(|tool| require::tool(NAME, tool))
    {
        return;
    }
    let observer = agent::binary().expect("observer binary");
    let pcapng = std::env::temp_dir().join(format!("observer-demo-{}.pcapng", std::process::id()));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--write")
        .arg(&pcapng)
        .env("OBSERVER_BIN", &observer)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the demo");
    let pid = child.id();
    let stdout = agent::lines(child.stdout.take().expect("stdout"));
    let stderr = agent::lines(child.stderr.take().expect("stderr"));
    let status = agent::wait_bounded(&mut child, tests::patient(Duration::from_secs(60))).expect("waiting");
    let took = started.elapsed();
    let out = agent::drain(&stdout).join("\n");
    let err = agent::drain(&stderr).join("\n");
    if std::env::var_os("OBSERVER_TEST_SHOW").is_some() {
        println!("{out}");
    }
    assert!(status.success(), "the demo failed ({status}): {err}\n{out}");
    assert!(took < tests::patient(Duration::from_secs(60)), "the demo took {took:?}");
    let namespaces = netns::ip(&["netns", "list"]).expect("ip netns list");
    let ours = format!("-{pid}-");
    assert!(
        !namespaces
            .lines()
            .any(|n| n.starts_with("obs-demo") && n.contains(&ours)),
        "the demo left namespaces: {namespaces}"
    );

    let acts = acts(&out);
    assert_eq!(acts.len(), 8, "six acts, the exit report and the end: {out}");

    // Act 1: WS=256 on the client's SYN, and the last ACK's window is its raw value times 256.
    let syn = find(&acts[0], &[" in ", "→ 22 [SYN] "]).unwrap_or_else(|| panic!("no SYN: {out}"));
    assert!(syn.contains(" WS=256 "), "{syn}");
    let ack = find(&acts[0], &[" in ", "→ 22 [ACK] Seq=1 Ack=1 "]).unwrap_or_else(|| panic!("no last ACK: {out}"));
    let win = value(ack, "Win=").expect("Win=");
    let mut args: Vec<String> = tshark::TCP_PREFS.map(str::to_owned).into();
    args.extend(
        [
            "-Y",
            "tcp.dstport == 22 && tcp.flags == 0x010 && tcp.seq == 1 && tcp.ack == 1",
        ]
        .map(str::to_owned),
    );
    args.extend(tshark::field_args(&["tcp.window_size_value"]));
    let raw = tshark::read(&pcapng, &args).expect("tshark -r");
    let _ = std::fs::remove_file(&pcapng);
    let raw: u64 = raw
        .first()
        .and_then(|r| r.trim().parse().ok())
        .expect("tshark's raw window");
    assert_eq!(win, raw * 256, "{ack}");

    // Act 2: SACK blocks naming both holes, a retransmission filling each.
    assert!(
        acts[1]
            .iter()
            .any(|l| l.matches("SLE=").count() == 2 && l.contains("· holes ")),
        "no ACK with two SACK blocks: {out}"
    );
    assert!(
        find(&acts[1], &["[TCP Fast Retransmission]", "fills hole"]).is_some(),
        "{out}"
    );
    assert_eq!(
        acts[1].iter().filter(|l| l.contains("· fills hole ")).count(),
        2,
        "{out}"
    );

    // Act 3: FIN both ways, data after the first, and the teardown's analysis.
    assert!(find(&acts[2], &[" in ", "→ 22 [FIN"]).is_some(), "{out}");
    assert!(find(&acts[2], &[" out ", "22 → ", "[FIN"]).is_some(), "{out}");
    let teardown = find(&acts[2], &[" teardown: client closed first"]).unwrap_or_else(|| panic!("{out}"));
    assert!(
        teardown.contains("half-close: 2000 bytes from server after the first FIN"),
        "{teardown}"
    );

    // Act 4: the ARP request given up.
    assert!(
        find(
            &acts[3],
            &["arp veth-b Who has 10.240.0.77? Tell 10.240.0.2 · unanswered after "]
        )
        .is_some(),
        "{out}"
    );

    // Act 5: the SYN queue's numbers and its drops, then the accept queue's.
    assert!(
        find(
            &acts[4],
            &["synq 5 accept 0/4", "DROPPED: SYN queue full (TCPReqQFullDrop +1)"]
        )
        .is_some(),
        "{out}"
    );
    assert!(
        find(
            &acts[4],
            &["accept 5/4", "DROPPED: accept queue full (ListenOverflows +1)"]
        )
        .is_some(),
        "{out}"
    );

    // Act 6: both tables have the same rows, the full listener's among them.
    let ours = table(&acts[5], "$ observer netstat");
    let theirs = table(&acts[5], "$ netstat -ant");
    assert_eq!(ours, theirs, "{out}");
    assert!(
        ours.iter()
            .any(|r| r.starts_with("tcp        5      0 10.240.0.2:8080 ") && r.contains("LISTEN")),
        "{ours:#?}"
    );
    assert_eq!(
        ours.iter().filter(|r| r.contains("ESTABLISHED")).count(),
        5,
        "{ours:#?}"
    );

    // The exit report: nothing lost.
    assert!(acts[6].contains(&"dropped records (ring buffer full): 0"), "{out}");
}
