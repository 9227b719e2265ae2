//! Least privilege: the running agent holds exactly the capabilities the README lists for how it runs, with
//! no_new_privs set, and still names the processes of sockets (a root one with every capability, and one of
//! another user), which is what the capabilities it keeps are for.

use std::{
    net::{TcpListener, TcpStream},
    process::Stdio,
    str::FromStr as _,
    thread,
};

use tests::{
    agent::{self, Agent},
    netns::Pair,
    require,
};

/// The capability mask the README's privileges table lists for the row `key` (its first cell).
fn readme_caps(key: &str) -> u64 {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| `{key}` | ")))
        .unwrap_or_else(|| panic!("no row for `{key}` in the README's privileges table"));
    let cell = row.split('|').nth(2).expect("a capabilities cell").trim();
    if cell == "none" {
        return 0;
    }
    cell.split(", ")
        .map(|name| {
            caps::Capability::from_str(name)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .bitmask()
        })
        .fold(0, |mask, bit| mask | bit)
}

/// `field` of the /proc status of every thread of `pid`.
fn status_fields(pid: u32, field: &str) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.expect("a thread").path().join("status")).expect("status");
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .unwrap_or_else(|| panic!("no {field} in {status}"))
                .trim()
                .to_owned()
        })
        .collect()
}

/// Starts the agent with `args` and checks its privileges (see [`assert_privileges`]).
fn start_checked(pair: &Pair, args: &[&str], key: &str) -> Agent {
    let agent = Agent::start(&pair.a, args).expect("starting observer");
    assert_privileges(agent.pid(), key);
    agent
}

/// What a `watch` keeps besides its row before TCX (6.6): CAP_NET_ADMIN, since it attaches through clsact
/// filters there (the README's note under the table).
fn clsact_extra(key: &str) -> u64 {
    const CAP_NET_ADMIN: u64 = 1 << 12;
    let tcx = require::kernel_version().is_some_and(|v| v >= (6, 6));
    if key.starts_with("watch") && !tcx {
        CAP_NET_ADMIN
    } else {
        0
    }
}

/// Every thread of `pid` holds the README's capabilities for `key` in its effective, permitted and bounding
/// sets, none inheritable or ambient, and NoNewPrivs is 1.
fn assert_privileges(pid: u32, key: &str) {
    let want = format!("{:016x}", readme_caps(key) | clsact_extra(key));
    for (field, value) in [
        ("CapEff", want.as_str()),
        ("CapPrm", &want),
        ("CapBnd", &want),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ] {
        let got = status_fields(pid, field);
        assert!(
            got.iter().all(|v| v == value),
            "{key}: {field} {got:?}, the README says {value}"
        );
    }
}

/// The JSON line's owner pid, for an outgoing SYN.
fn syn_owner(line: &str) -> Option<u64> {
    let r: serde_json::Value = serde_json::from_str(line).ok()?;
    let syn = r["proto"] == "tcp" && r["direction"] == "out" && r["flags"] == serde_json::json!(["SYN"]);
    syn.then(|| r["socket"]["owner"]["pid"].as_u64()).flatten()
}

/// Each way of running keeps what the README lists and no more; `watch` still names the owner of a socket of
/// this test (root, every capability) and of socat running as nobody.
#[test]
fn the_running_agent_keeps_only_what_the_readme_lists() {
    const NAME: &str = "the_running_agent_keeps_only_what_the_readme_lists";
    if !require::root(NAME) || !require::tool(NAME, "socat") || !require::tool(NAME, "setpriv") {
        return;
    }
    let pair = Pair::new("pv", 170).expect("namespaces");
    let a_if = pair.a_if.as_str();
    let mut agent = start_checked(&pair, &["--iface", a_if, "--json"], "watch");
    let bind = format!("{}:7000", pair.b_addr);
    let listener = pair
        .b
        .enter(move || TcpListener::bind(bind))
        .expect("entering b")
        .expect("bind");
    let server = thread::spawn(move || {
        for _ in 0..2 {
            drop(listener.accept().expect("accept"));
        }
    });
    let target = format!("{}:7000", pair.b_addr).parse().expect("address");
    let ours = pair
        .a
        .enter(move || TcpStream::connect_timeout(&target, tests::wait()))
        .expect("entering a")
        .expect("connecting");
    let mut socat = pair.a.command("setpriv");
    socat
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "socat",
            "-u",
            "EXEC:sleep 2",
        ])
        .arg(format!("TCP:{}:7000", pair.b_addr))
        .stdout(Stdio::null());
    let mut nobody = socat.spawn().expect("spawning socat as nobody");
    let owners = [u64::from(std::process::id()), u64::from(nobody.id())];
    let found = |seen: &[String]| owners.iter().all(|pid| seen.iter().any(|l| syn_owner(l) == Some(*pid)));
    let mut seen = Vec::new();
    while !found(&seen) && agent.wait_for(|l| syn_owner(l).is_some(), tests::wait(), &mut seen) {}
    let _ = nobody.wait();
    drop(ours);
    server.join().expect("server");
    assert!(found(&seen), "SYNs owned by {owners:?}: {seen:#?}");
    let f = agent.stop(libc::SIGINT).expect("stopping observer");
    assert_eq!(f.code, Some(0), "{f:#?}");
    drop(start_checked(
        &pair,
        &["--iface", a_if, "--no-sockets"],
        "watch --no-sockets",
    ));
    drop(start_checked(
        &pair,
        &["--iface", a_if, "--tc-attach", "netlink"],
        "watch --tc-attach netlink",
    ));
    // The live view prints its first table once its privileges are dropped.
    let mut queues = agent::command(&pair.a, &[]).expect("observer binary");
    let mut queues = queues
        .args(["queues", "--count", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning observer queues");
    let table = agent::lines(queues.stdout.take().expect("stdout"));
    table.recv_timeout(tests::wait()).expect("the first table");
    assert_privileges(queues.id(), "queues");
    let _ = queues.kill();
    let _ = queues.wait();
}

/// Started with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON only (no CAP_SETPCAP to narrow its bounding set), the
/// agent says what goes unseen without the capabilities that name processes, runs, and still sets
/// no_new_privs with an empty effective set.
#[test]
fn missing_process_capabilities_are_named_at_start() {
    const NAME: &str = "missing_process_capabilities_are_named_at_start";
    if !require::root(NAME) || !require::tool(NAME, "setpriv") {
        return;
    }
    let pair = Pair::new("pm", 171).expect("namespaces");
    let few = [
        "setpriv",
        "--inh-caps=-all",
        "--bounding-set=-all,+bpf,+net_admin,+perfmon",
    ];
    let mut agent = Agent::start_as(&pair.a, &few, &["--iface", &pair.a_if]).expect("starting observer");
    assert_eq!(
        status_fields(agent.pid(), "CapEff"),
        [format!("{:016x}", clsact_extra("watch"))]
    );
    assert_eq!(status_fields(agent.pid(), "NoNewPrivs"), ["1"]);
    let f = agent.stop(libc::SIGINT).expect("stopping observer");
    assert_eq!(f.code, Some(0), "{f:#?}");
    assert_eq!(
        f.stderr.first().map(String::as_str),
        Some(
            "observer: note: without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE the owners of other users' sockets are \
             not named"
        ),
        "{f:#?}"
    );
}
