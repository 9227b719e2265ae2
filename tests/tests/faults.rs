//! Every fault a clear end: the real `observer` on a test's own veth pair loses its interface, its links, its
//! stdout or its disk, and must end at once with its documented exit status and one line naming the cause,
//! after the exit report; a closed stdout ends every command quietly.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use observer::cmd::exit::status;
use tests::{
    agent::{self, Agent, Finished},
    netns::{self, Pair},
    oracle, require, tshark,
};

/// How soon a fault must end the agent (the issue asks for a second; half a second more for a loaded machine),
/// made [`tests::patient`] for the kernel matrix's emulated guests.
fn prompt() -> Duration {
    tests::patient(Duration::from_millis(1500))
}

/// The exit statuses of README's table (a unit test holds them against it).
const INTERFACE_GONE: i32 = status::INTERFACE_GONE as i32;
const INTERFACE_RENAMED: i32 = status::INTERFACE_RENAMED as i32;
const DETACHED: i32 = status::DETACHED as i32;
const OUTPUT: i32 = status::OUTPUT as i32;
const PCAPNG: i32 = status::PCAPNG as i32;

/// Runs `observer <args>` in `pair.a` with `stdout`, sending ARP requests into its interface from the peer
/// (so that a watching agent has lines to print) until it ends, and collects its stderr.
fn run_with_stdout(pair: &Pair, args: &[&str], stdout: Stdio) -> Finished {
    let mut cmd = agent::command(&pair.a, &[]).expect("observer binary");
    let mut child = cmd
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning observer");
    let deadline = Instant::now() + tests::wait();
    while child.try_wait().expect("waitpid").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!(
                "{args:?}: observer did not end within {:?}: {:#?}",
                tests::wait(),
                Finished::from(out)
            );
        }
        pair.b.inject(&pair.b_if, vec![oracle::arp_request()]);
        thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("collecting output").into()
}

/// The ids of the agent's TCX or XDP links (`link_type` `tcx` or `xdp`) in the order of their fds (the order
/// of attaching: ingress first), from its /proc fdinfo.
fn link_ids(pid: u32, link_type: &str) -> Vec<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading the agent's fdinfo");
    let mut links: Vec<(u32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let info = std::fs::read_to_string(e.path()).ok()?;
            info.lines()
                .any(|l| l == format!("link_type:\t{link_type}"))
                .then_some(())?;
            let id = info.lines().find_map(|l| l.strip_prefix("link_id:\t"))?;
            Some((fd, id.to_owned()))
        })
        .collect();
    links.sort();
    links.into_iter().map(|(_, id)| id).collect()
}

/// `bpftool link detach` of the agent's first link of `link_type`, as someone else would.
fn detach_first(pid: u32, link_type: &str) -> anyhow::Result<()> {
    let id = link_ids(pid, link_type).into_iter().next().expect("a link");
    netns::run(std::process::Command::new("bpftool").args(["link", "detach", "id", &id])).map(drop)
}

/// The last line of an agent whose interface went away.
const GONE: &str = "observer: error: interface {if} is gone (deleted, or moved out of this network namespace)";

/// The agent ended within [`prompt`] of `since`, with `code`, its exit report, and `line` as its last words.
fn assert_ended(what: &str, f: &Finished, since: Instant, code: i32, line: &str, iface: &str) {
    assert!(
        since.elapsed() < prompt(),
        "{what}: ended after {:?}: {f:#?}",
        since.elapsed()
    );
    assert_eq!(f.code, Some(code), "{what}: {f:#?}");
    assert_eq!(f.stderr.last().map(String::as_str), Some(line), "{what}: {f:#?}");
    assert!(
        f.stderr
            .iter()
            .any(|l| l == &format!("observer: detached from {iface}")),
        "{what}: no exit report before the error: {f:#?}"
    );
    assert!(!f.stderr.iter().any(|l| l.contains("panicked")), "{what}: {f:#?}");
}

/// Interface renamed, deleted, moved to another namespace, its peer's namespace deleted, a TCX or XDP link
/// detached by someone else (`bpftool link detach`) and a legacy tc filter deleted (`tc filter del`): each ends
/// the agent within a second with its own status.
#[test]
fn interface_and_link_faults_end_the_agent() {
    const NAME: &str = "interface_and_link_faults_end_the_agent";
    if !require::root(NAME) || !require::tool(NAME, "bpftool") || !require::tool(NAME, "tc") {
        return;
    }
    // (what, options, the fault, the exit status, the last line with `{if}` for the interface)
    type Fault = fn(&Pair, u32) -> anyhow::Result<()>;
    let cases: [(&str, &[&str], Fault, i32, &str); 7] = [
        (
            "renamed",
            &["--hook", "tc"],
            // Down first: kernels before 6.2 (Debian 12's 6.1) refuse to rename an interface that is up.
            |p, _| {
                p.a.ip(&["link", "set", &p.a_if, "down"])?;
                p.a.ip(&["link", "set", &p.a_if, "name", "veth-z"]).map(drop)
            },
            INTERFACE_RENAMED,
            "observer: error: interface {if} was renamed to veth-z",
        ),
        (
            "deleted",
            &["--hook", "tc"],
            |p, _| p.a.ip(&["link", "del", &p.a_if]).map(drop),
            INTERFACE_GONE,
            GONE,
        ),
        (
            "peer namespace deleted",
            &["--hook", "xdp"],
            |p, _| netns::ip(&["netns", "del", &p.b.name]).map(drop),
            INTERFACE_GONE,
            GONE,
        ),
        (
            "moved to another namespace",
            &["--hook", "tc"],
            |p, _| p.a.ip(&["link", "set", &p.a_if, "netns", &p.b.name]).map(drop),
            INTERFACE_GONE,
            GONE,
        ),
        (
            "TCX link detached",
            &["--hook", "tc"],
            |_, pid| detach_first(pid, "tcx"),
            DETACHED,
            "observer: error: tc_ingress was detached from {if} by someone else",
        ),
        (
            "XDP link detached",
            &["--hook", "xdp"],
            |_, pid| detach_first(pid, "xdp"),
            DETACHED,
            "observer: error: xdp_ingress was detached from {if} by someone else",
        ),
        (
            "netlink tc filter deleted",
            &["--tc-attach", "netlink"],
            |p, _| netns::run(p.a.command("tc").args(["filter", "del", "dev", &p.a_if, "egress"])).map(drop),
            DETACHED,
            "observer: error: tc_egress was detached from {if} by someone else",
        ),
    ];
    for (i, (what, options, fault, code, line)) in cases.into_iter().enumerate() {
        if what.starts_with("TCX") && !require::kernel_supports(NAME, 6, 6, "TCX links") {
            continue;
        }
        let pair = Pair::new(&format!("ft{i}"), 150 + i as u8).expect("namespaces");
        let args: Vec<&str> = ["--iface", pair.a_if.as_str()]
            .into_iter()
            .chain(options.iter().copied())
            .collect();
        let mut agent = Agent::start(&pair.a, &args).expect("starting observer");
        let line = line.replace("{if}", &pair.a_if);
        let since = Instant::now();
        fault(&pair, agent.pid()).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let f = agent.wait_exit(tests::wait()).expect("observer ends");
        assert_ended(what, &f, since, code, &line, &pair.a_if);
    }
}

/// A mounted tmpfs of `size`, unmounted on drop (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(tag: &str, size: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("observer-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let opts = format!("size={size}");
        netns::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
                .arg(&dir),
        )
        .expect("mounting a tmpfs");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = netns::run(std::process::Command::new("umount").arg(&self.0));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `--write` onto a full disk (a 64 KiB tmpfs): the agent ends at once with its status and a line naming the
/// file and the error, and the file written so far opens in tshark without a complaint.
#[test]
fn a_full_disk_under_write_ends_with_a_readable_file() {
    const NAME: &str = "a_full_disk_under_write_ends_with_a_readable_file";
    if !require::root(NAME) || !require::tool(NAME, "tshark") {
        return;
    }
    let disk = Tmpfs::new("full", "64k");
    let file = disk.path().join("out.pcapng");
    let pair = Pair::new("fd", 160).expect("namespaces");
    let write = file.to_string_lossy().into_owned();
    let mut agent =
        Agent::start(&pair.a, &["--iface", &pair.a_if, "--no-sockets", "--write", &write]).expect("starting observer");
    let segment = oracle::data_segment(0);
    let deadline = Instant::now() + tests::wait();
    // 64 KiB hold some 500 of these packets; batches small enough for the ring buffer, until the agent ends.
    let mut since = Instant::now();
    while Instant::now() < deadline && !exited(agent.pid()) {
        since = Instant::now();
        pair.b.inject(&pair.b_if, vec![segment.clone(); 100]);
        thread::sleep(Duration::from_millis(20));
    }
    let f = agent.wait_exit(tests::wait()).expect("observer ends on a full disk");
    let line = format!("observer: error: writing {write}: No space left on device (os error 28)");
    assert_ended("disk full", &f, since, PCAPNG, &line, &pair.a_if);
    let read = tshark::read(&file, &[]).unwrap_or_else(|e| panic!("tshark: {e:#}: {:#?}", f.stderr));
    assert!(read.len() > 100, "{} packets in the file", read.len());
    assert!(
        read.len() <= f.stdout.len(),
        "{} packets, {} lines",
        read.len(),
        f.stdout.len()
    );
}

/// A stdout that fails (here /dev/full: ENOSPC) ends the agent with its own status and one line.
#[test]
fn a_stdout_error_has_its_own_status() {
    const NAME: &str = "a_stdout_error_has_its_own_status";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("so", 161).expect("namespaces");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let f = run_with_stdout(&pair, &["--iface", &pair.a_if, "--no-sockets"], full.into());
    assert_eq!(f.code, Some(OUTPUT), "{f:#?}");
    assert_eq!(
        f.stderr.last().map(String::as_str),
        Some("observer: error: writing to stdout failed: No space left on device (os error 28)"),
        "{f:#?}"
    );
}

/// Whether `pid` (a child not yet waited for) has exited: a zombie.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A reader that went away (`observer ... | head -1`) ends every command quietly: status 0, no error line.
/// The pipe's read end is closed before the command starts, so its first write meets EPIPE.
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    const NAME: &str = "a_closed_stdout_ends_every_command_quietly";
    if !require::root(NAME) {
        return;
    }
    let pair = Pair::new("cp", 162).expect("namespaces");
    let a_if = pair.a_if.as_str();
    let commands: [&[&str]; 8] = [
        &["netstat"],
        &["netstat", "--ss"],
        &["netstat", "--json"],
        &["queues", "--once"],
        &["queues", "--count", "3"],
        &["queues", "--json", "--count", "3"],
        &["--iface", a_if, "--no-sockets"],
        &["watch", "--iface", a_if, "--json"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let f = run_with_stdout(&pair, args, writer.into());
        assert_eq!(f.code, Some(0), "{args:?}: {f:#?}");
        assert!(
            !f.stderr.iter().any(|l| l.contains("error") || l.contains("panicked")),
            "{args:?}: {f:#?}"
        );
    }
}
