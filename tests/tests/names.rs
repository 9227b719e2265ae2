//! MAC address names against tshark, the oracle: addresses under every kind of entry of the installed `manuf`
//! and `wka` files (24-bit vendor prefixes, /28 and /36 blocks, well-known addresses and masks), broadcast and
//! unknown ones, written as the source of ARP frames into a pcap; tshark's Source column with its default name
//! resolution must equal observer's name for each.

use std::{fs, process::Command};

use tests::require;

/// One classic pcap of ARP requests, one per source address.
fn pcap(sources: &[[u8; 6]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, src) in sources.iter().enumerate() {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(src);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(src);
        frame.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        frame.resize(60, 0);
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// The address an entry of `manuf` or `wka` starts with, and its mask (48 for a whole address).
fn entry(line: &str) -> Option<([u8; 6], u32)> {
    let addr = line.split('#').next()?.split_whitespace().next()?;
    let (bytes, mask) = match addr.split_once('/') {
        Some((b, m)) => (b, m.parse().ok()?),
        None => (addr, 0),
    };
    let mut mac = [0u8; 6];
    let mut n = 0;
    for part in bytes.split([':', '-', '.']) {
        *mac.get_mut(n)? = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    Some((mac, if mask == 0 { n as u32 * 8 } else { mask }))
}

/// Addresses under a prefix of `bits`: its bits kept, the rest from a few patterns (zero, small, full).
fn under(prefix: [u8; 6], bits: u32, seed: u64) -> Vec<[u8; 6]> {
    let patterns = [
        0u64,
        1,
        0x100,
        0x1_0000,
        0xffff_ffff_ffff,
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    ];
    let mut top = [0u8; 8];
    top[2..].copy_from_slice(&prefix);
    let keep = if bits == 48 {
        u64::MAX
    } else {
        !((1u64 << (48 - bits)) - 1)
    } & 0xffff_ffff_ffff;
    patterns
        .iter()
        .map(|p| {
            let n = (u64::from_be_bytes(top) & keep) | (p & !keep & 0xffff_ffff_ffff);
            let b = n.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
        .collect()
}

#[test]
fn names_equal_tsharks_default_columns() {
    const NAME: &str = "names_equal_tsharks_default_columns";
    if !require::tool(NAME, "tshark") {
        return;
    }
    let manuf = fs::read_to_string("/usr/share/wireshark/manuf").expect("tshark's manuf file");
    let wka = fs::read_to_string("/usr/share/wireshark/wka").unwrap_or_default();
    let mut sources: Vec<[u8; 6]> = vec![[0xff; 6], [0x02, 0xaa, 0, 0, 0, 1], [0x0a, 0, 0x27, 0, 0, 0]];
    let mut kinds = std::collections::BTreeMap::<u32, usize>::new();
    for (i, (mac, bits)) in manuf.lines().chain(wka.lines()).filter_map(entry).enumerate() {
        // Every entry of the rarer kinds, and a sample of the 24-bit vendor prefixes.
        let seen = kinds.entry(bits).or_default();
        *seen += 1;
        if bits != 24 || i % 97 == 0 || *seen <= 50 {
            sources.extend(under(mac, bits, i as u64));
        }
    }
    assert!(
        kinds.len() >= 4 && sources.len() > 2000,
        "{kinds:?}, {} addresses",
        sources.len()
    );
    let path = std::env::temp_dir().join(format!("observer-names-{}.pcap", std::process::id()));
    fs::write(&path, pcap(&sources)).expect("writing the pcap");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args(["-T", "fields", "-e", "_ws.col.Source"])
        .output()
        .expect("running tshark");
    let _ = fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(theirs.len(), sources.len());
    let names = observer::cmd::mac_names(false);
    let wrong: Vec<String> = sources
        .iter()
        .zip(&theirs)
        .filter_map(|(mac, t)| {
            let ours = names.name(mac);
            (ours != *t).then(|| format!("{}: observer {ours}, tshark {t}", observer::view::render::fmt_mac(mac)))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} names differ:\n{}",
        wrong.len(),
        sources.len(),
        wrong[..wrong.len().min(40)].join("\n")
    );
    let numeric = observer::cmd::mac_names(true);
    assert_eq!(numeric.name(&[0xff; 6]), "ff:ff:ff:ff:ff:ff");
}
