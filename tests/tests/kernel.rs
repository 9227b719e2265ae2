//! The real kernel programs, run with BPF_PROG_TEST_RUN on frames built with etherparse, against two
//! references: the host build of the same parser (bit for bit) and etherparse's reading (field by field).

use std::collections::BTreeMap;

use observer_common::{
    Config, Counter,
    config::MODE_CONTROL,
    parse::{Parsed, parse_frame},
    record::{ArpRecord, ArpSnapRecord, SNAP_LEN, TcpRecord, TcpSnapRecord},
};
use tests::{
    kernel::{Kernel, Program, Run, TC_ACT_UNSPEC, XDP_PASS, expected_snap_len, runnable},
    oracle::{self, Outcome},
    require,
};

const PROGRAMS: [(Program, Counter); 3] = [
    (Program::TcIngress, Counter::SeenTcIngress),
    (Program::TcEgress, Counter::SeenTcEgress),
    (Program::Xdp, Counter::SeenXdp),
];

/// Runs one frame and checks everything a run must satisfy; returns the outcome, or `None` when the kernel's
/// test harness does not take this frame for this program (see `runnable`).
fn check_frame(kernel: &mut Kernel, program: Program, seen: Counter, frame: &[u8]) -> Option<Result<Parsed, Counter>> {
    check_run(kernel, program, seen, frame).map(|(outcome, _)| outcome)
}

/// [`check_frame`], also returning the run.
fn check_run(
    kernel: &mut Kernel,
    program: Program,
    seen: Counter,
    frame: &[u8],
) -> Option<(Result<Parsed, Counter>, Run)> {
    if !runnable(program, frame) {
        return None;
    }
    let run: Run = kernel
        .run(program, frame, 1)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program:?} on {} bytes: {e:#}", frame.len()));
    let pass = if program == Program::Xdp {
        XDP_PASS
    } else {
        TC_ACT_UNSPEC
    };
    assert_eq!(run.verdict, pass, "{program:?} must pass every packet on");
    assert_eq!(run.data_out, frame, "{program:?} must not alter the packet");
    assert!(
        run.rose.contains(&(seen, 1)),
        "{program:?} did not count the frame as seen: {:?}",
        run.rose
    );
    let got = run
        .outcome(seen)
        .unwrap_or_else(|e| panic!("{program:?}: {e} for frame {frame:02x?}"));
    let host = parse_frame(frame);
    assert_eq!(
        got, host,
        "{program:?}: kernel and host parser differ on frame {frame:02x?}"
    );
    if let Err(why) = oracle::check(&got, &oracle::expected(frame)) {
        panic!("{program:?}: {why} for frame {frame:02x?}");
    }
    Some((got, run))
}

fn kernel(test: &str, config: &Config) -> Option<Kernel> {
    if !require::root(test) {
        return None;
    }
    Some(Kernel::load(config).expect("loading the programs"))
}

#[test]
fn named_cases_through_every_program() {
    let Some(mut kernel) = kernel("named_cases_through_every_program", &Config::default()) else {
        return;
    };
    let mut checked = 0;
    for (name, frame, outcome) in oracle::named_cases() {
        for (program, seen) in PROGRAMS {
            let Some(got) = check_frame(&mut kernel, program, seen, &frame) else {
                continue;
            };
            match (outcome, got) {
                (Outcome::Record, Ok(_)) => {}
                (Outcome::Counter(want), Err(c)) if want == c => {}
                (want, got) => panic!("{name} through {program:?}: want {want:?}, got {got:?}"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * 30, "only {checked} runs");
}

#[test]
fn truncated_at_every_byte() {
    let Some(mut kernel) = kernel("truncated_at_every_byte", &Config::default()) else {
        return;
    };
    let mut truncated = 0;
    for (name, frame, outcome) in oracle::named_cases() {
        if outcome != Outcome::Record {
            continue;
        }
        for n in tests::kernel::MIN_FRAME..frame.len() {
            let cut = oracle::truncate(&frame, n);
            for (program, seen) in [PROGRAMS[0], PROGRAMS[2]] {
                // check_frame compares with the host parser and the oracle: a cut frame is counted in its
                // class, or (cut inside padding or payload the IP length does not cover) still a right record.
                if check_frame(&mut kernel, program, seen, &cut) == Some(Err(Counter::Truncated)) {
                    truncated += 1;
                }
            }
        }
        assert!(truncated > 0, "{name}: no cut was truncated");
    }
}

#[test]
fn ten_thousand_random_frames() {
    let Some(mut kernel) = kernel("ten_thousand_random_frames", &Config::default()) else {
        return;
    };
    let mut classes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let frames = oracle::random_frames(0x0b5e_47e4, 10_000);
    for frame in &frames {
        for (program, seen) in [PROGRAMS[0], PROGRAMS[2]] {
            let class = match check_frame(&mut kernel, program, seen, frame) {
                None => "not runnable",
                Some(Ok(Parsed::Tcp(_))) => "tcp record",
                Some(Ok(Parsed::Arp(_))) => "arp record",
                Some(Err(c)) => c.name(),
            };
            *classes.entry(class).or_default() += 1;
        }
    }
    eprintln!(
        "kernel outcomes over {} random frames x 2 programs: {classes:?}",
        frames.len()
    );
    let skipped = classes.get("not runnable").copied().unwrap_or(0);
    assert!(
        skipped < 2_000,
        "too many frames the test harness does not take: {skipped}"
    );
    for needed in [
        "tcp record",
        "arp record",
        "malformed_truncated",
        "malformed_option_overrun",
    ] {
        assert!(classes.contains_key(needed), "the generator never produced {needed}");
    }
}

#[test]
fn filter_and_control_mode_in_the_kernel() {
    let mut config = Config {
        port_count: 1,
        ..Config::default()
    };
    config.ports[0] = 9;
    let Some(mut kernel) = kernel("filter_and_control_mode_in_the_kernel", &config) else {
        return;
    };
    let syn = oracle::syn_with_all_options();
    let run = kernel.run(Program::TcIngress, &syn, 1).unwrap();
    assert_eq!(
        run.outcome(Counter::SeenTcIngress),
        Ok(Err(Counter::Filtered)),
        "port 9 only"
    );
    let arp = oracle::arp_request();
    let run = kernel.run(Program::TcIngress, &arp, 1).unwrap();
    assert!(
        matches!(run.outcome(Counter::SeenTcIngress), Ok(Ok(Parsed::Arp(_)))),
        "ports do not apply to ARP"
    );

    kernel
        .capture
        .set_config(&Config {
            mode: MODE_CONTROL,
            ..Config::default()
        })
        .unwrap();
    let data = oracle::data_segment(100);
    let run = kernel.run(Program::TcIngress, &data, 1).unwrap();
    assert_eq!(run.outcome(Counter::SeenTcIngress), Ok(Err(Counter::ControlSuppressed)));
    let run = kernel.run(Program::TcIngress, &syn, 1).unwrap();
    assert!(
        matches!(run.outcome(Counter::SeenTcIngress), Ok(Ok(Parsed::Tcp(_)))),
        "a SYN always passes"
    );
}

#[test]
fn records_carry_hook_direction_and_time() {
    let Some(mut kernel) = kernel("records_carry_hook_direction_and_time", &Config::default()) else {
        return;
    };
    let syn = oracle::syn_with_all_options();
    for (program, hook, direction) in [
        (
            Program::TcIngress,
            observer_common::record::HOOK_TC_INGRESS,
            observer_common::record::DIR_INGRESS,
        ),
        (
            Program::TcEgress,
            observer_common::record::HOOK_TC_EGRESS,
            observer_common::record::DIR_EGRESS,
        ),
        (
            Program::Xdp,
            observer_common::record::HOOK_XDP,
            observer_common::record::DIR_INGRESS,
        ),
    ] {
        let run = kernel.run(program, &syn, 1).unwrap();
        let [event] = run.events.as_slice() else {
            panic!("{program:?}: {} records", run.events.len())
        };
        let h = event.header().expect("a packet record");
        assert_eq!((h.hook, h.direction), (hook, direction), "{program:?}");
        assert!(h.ts_ns > 0, "{program:?}: no timestamp");
        assert_eq!(h.wire_len as usize, syn.len(), "{program:?}");
    }
}

/// With `Config::snap` on, every record carries the frame's first bytes: through the end of the TCP header
/// (etherparse says where that is), or the whole ARP frame, at most `SNAP_LEN`; the record fields are as
/// without it. Named cases, each of their truncations and the random frames, through TC and XDP.
#[test]
fn snap_carries_the_header_bytes() {
    let config = Config {
        snap: 1,
        ..Config::default()
    };
    let Some(mut kernel) = kernel("snap_carries_the_header_bytes", &config) else {
        return;
    };
    let mut frames: Vec<Vec<u8>> = oracle::named_cases().into_iter().map(|(_, f, _)| f).collect();
    let cuts: Vec<Vec<u8>> = frames
        .iter()
        .flat_map(|f| (tests::kernel::MIN_FRAME..f.len()).map(|n| oracle::truncate(f, n)))
        .collect();
    frames.extend(cuts);
    frames.extend(oracle::random_frames(0x5ea9_0001, 10_000));
    let (mut tcp, mut arp, mut cut_at_snap) = (0, 0, 0);
    for frame in &frames {
        for (program, seen) in PROGRAMS {
            let Some((Ok(parsed), run)) = check_run(&mut kernel, program, seen, frame) else {
                continue;
            };
            let want = expected_snap_len(frame, &parsed)
                .unwrap_or_else(|| panic!("etherparse finds no TCP header in {frame:02x?}"));
            assert_eq!(
                run.snap(),
                Some(&frame[..want]),
                "{program:?}: header bytes of frame {frame:02x?}"
            );
            let size = match parsed {
                Parsed::Tcp(_) => {
                    tcp += 1;
                    size_of::<TcpSnapRecord>()
                }
                Parsed::Arp(_) => {
                    arp += 1;
                    size_of::<ArpSnapRecord>()
                }
            };
            assert_eq!(run.sizes, [size], "{program:?}");
            cut_at_snap += usize::from(want == SNAP_LEN);
        }
    }
    eprintln!("snap: {tcp} TCP and {arp} ARP records checked, {cut_at_snap} cut at {SNAP_LEN} bytes");
    assert!(tcp > 1000 && arp > 100, "too few records: {tcp} TCP, {arp} ARP");
    assert!(cut_at_snap > 0, "no frame had headers longer than SNAP_LEN");
}

/// With `Config::snap` off (the default) the records are the plain size and carry no header bytes.
#[test]
fn without_snap_records_keep_their_size() {
    let Some(mut kernel) = kernel("without_snap_records_keep_their_size", &Config::default()) else {
        return;
    };
    for (frame, size) in [
        (oracle::syn_with_all_options(), size_of::<TcpRecord>()),
        (oracle::arp_request(), size_of::<ArpRecord>()),
    ] {
        for (program, _) in PROGRAMS {
            let run = kernel.run(program, &frame, 1).unwrap();
            assert_eq!(run.sizes, [size], "{program:?}");
            assert_eq!(run.snap(), None, "{program:?}");
        }
    }
}
