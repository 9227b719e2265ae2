//! The connection helper the socket benchmark uses: `ss -tan` inside the namespace is the oracle.

use std::collections::HashMap;

use tests::{conns::Conns, netns, require};

/// Counts `ss -tan` rows by state, and ESTAB rows by local address.
fn ss_counts(conns: &Conns) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let out = netns::run(conns.ns().command("ss").arg("-tan")).expect("ss -tan");
    let mut states = HashMap::new();
    let mut estab_by_local_ip = HashMap::new();
    for line in out.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        *states.entry(cols[0].to_string()).or_insert(0) += 1;
        if cols[0] == "ESTAB" {
            let ip = cols[3].rsplit_once(':').expect("address:port").0.to_string();
            *estab_by_local_ip.entry(ip).or_insert(0) += 1;
        }
    }
    (states, estab_by_local_ip)
}

#[test]
fn opens_connections_over_several_processes_and_removes_everything_on_drop() {
    if !require::root("conns") || !require::tool("conns", "ss") {
        return;
    }
    let conns = Conns::open_spread("conns", 2_000, 600).expect("opening 2,000 connections");
    assert_eq!(conns.listeners().len(), 4, "2,000 at 600 a process need 4 processes");
    assert_eq!(conns.pids().len(), 4);
    let (states, by_ip) = ss_counts(&conns);
    assert_eq!(states.get("ESTAB"), Some(&4_000), "{states:?}");
    assert_eq!(states.get("LISTEN"), Some(&4), "{states:?}");
    assert_eq!(states.values().sum::<usize>(), conns.sockets(), "{states:?}");
    // Clients come from 127.0.1.<child + 1>, accepted sockets sit on 127.0.0.1: 500 clients a child.
    assert_eq!(by_ip.get("127.0.0.1"), Some(&2_000), "{by_ip:?}");
    for i in 1..=4 {
        assert_eq!(by_ip.get(&format!("127.0.1.{i}")), Some(&500), "{by_ip:?}");
    }

    let name = conns.ns().name.clone();
    let pids = conns.pids();
    drop(conns);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "holder {pid} still exists after drop"
        );
    }
    let list = netns::ip(&["netns", "list"]).expect("ip netns list");
    assert!(
        !list.lines().any(|l| l.split_whitespace().next() == Some(&name)),
        "{name} left behind: {list}"
    );
}

#[test]
fn one_process_holds_a_small_table() {
    if !require::root("conns_small") || !require::tool("conns_small", "ss") {
        return;
    }
    let conns = Conns::open("connsmall", 3).expect("opening 3 connections");
    assert_eq!(conns.sockets(), 7);
    let (states, _) = ss_counts(&conns);
    assert_eq!(states.get("ESTAB"), Some(&6), "{states:?}");
    assert_eq!(states.get("LISTEN"), Some(&1), "{states:?}");
}
