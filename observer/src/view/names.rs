//! Wireshark's default name resolution for MAC addresses, as its Source and Destination columns show them:
//! `Broadcast`, a well-known address's name, or a vendor's short name and the bytes its prefix leaves
//! (`VMware_c0:00:08`); the raw address where nothing matches.
//!
//! The names come from Wireshark's own files where it is installed (`manuf`, `wka`, `/etc/ethers`: the command
//! reads them and hands their text over), so that lines equal tshark's; else from [`BUILTIN`]. The lookup is
//! tshark 4.0's (`eth_addr_resolve`), checked address by address against it:
//! 1. a whole address (`wka`'s and `ethers`' exact entries, then ff:ff:ff:ff:ff:ff as `Broadcast`) gives its name;
//! 2. the blocks (every entry written with a mask: `manuf`'s `/28` and `/36`, `wka`'s) are kept by the address
//!    they are written with, whatever their mask. For a mask from 47 bits down to 24, the address cut to that
//!    mask is looked up; the first hit gives its name and the bytes the mask does not cover whole, the first of
//!    them cut to the bits after the mask (`Convergi_01`, `ShinkoTe_01:00`, `IPv4mcast_7f:00:01`);
//! 3. a `manuf` vendor prefix (three bytes, no mask) gives `name_xx:yy:zz`;
//! 4. masks from 23 bits down to 0 as in step 2.

use std::{cell::RefCell, collections::HashMap, fmt::Write as _};

use crate::model::FastMap;
use crate::view::render::fmt_mac;

/// The prefixes observer knows without Wireshark's files: the virtual NICs of the hypervisors and clouds its
/// users capture on, and the multicast blocks, with the short names Wireshark's `manuf` and `wka` give them
/// (IEEE registry assignments; see the README).
pub const BUILTIN: &str = "\
00:03:FF\tMicrosof
00:05:69\tVMware
00:0C:29\tVMware
00:0D:3A\tMicrosof
00:15:5D\tMicrosof
00:16:3E\tXensourc
00:1A:4A\tQumranet
00:1C:14\tVMware
00:1C:42\tParallel
00:21:F6\tOracle
00:50:56\tVMware
08:00:27\tPcsCompu
52:54:00\tRealtekU
01-00-5E/25\tIPv4mcast
33-33-00-00-00-00/16\tIPv6mcast
";

/// MAC address names, looked up as Wireshark does.
///
/// Nothing is parsed until an address is named (most runs print few ARP lines, and a test agent many starts):
/// then the small files whole, and of `manuf` (52,000 lines) only the lines of that address's vendor prefix,
/// found by a text search; both are kept for the next address.
#[derive(Debug, Default)]
pub struct MacNames {
    /// Names resolve (false: `-n`, every address raw, broadcast too).
    on: bool,
    /// The small files' texts (`wka`, `ethers`, or the built-in table), in the order later entries win.
    small: Vec<String>,
    /// `manuf`'s text, when Wireshark's files are used.
    manuf: String,
    /// What was parsed so far.
    parsed: RefCell<Parsed>,
}

/// The tables parsed so far.
#[derive(Debug, Default)]
struct Parsed {
    /// The small files, once parsed.
    small: Option<Tables>,
    /// `manuf`'s lines by vendor prefix (three bytes), parsed when an address of that prefix was named.
    manuf: FastMap<u32, Tables>,
}

/// Entries of one or more files.
#[derive(Debug, Default)]
struct Tables {
    /// Each distinct name once (a vendor has many prefixes): the maps hold indices.
    names: Vec<Box<str>>,
    /// Whole addresses.
    exact: FastMap<[u8; 6], u32>,
    /// Blocks, by the address they are written with (as a 48-bit number).
    blocks: FastMap<u64, u32>,
    /// Vendor prefixes, by their three bytes.
    vendors: FastMap<u32, u32>,
}

impl Tables {
    /// Entries of one file: `address<whitespace>name`, `#` starting a comment; a later entry for the same key wins.
    fn add<'a>(&mut self, lines: impl Iterator<Item = &'a str>) {
        let mut index: HashMap<&str, u32> = HashMap::new();
        for line in lines {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let (Some(addr), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((bytes, len, mask)) = parse_prefix(addr) else {
                continue;
            };
            let name = *index.entry(name).or_insert_with(|| {
                self.names.push(name.into());
                (self.names.len() - 1) as u32
            });
            match (mask, len) {
                (Some(_), _) => {
                    self.blocks.insert(number(&bytes), name);
                }
                (None, 3) => {
                    self.vendors.insert((number(&bytes) >> 24) as u32, name);
                }
                (None, 6) => {
                    self.exact.insert(bytes, name);
                }
                _ => {}
            }
        }
    }

    fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }

    /// The block the address cut to `bits` is written as, with the bytes the cut leaves.
    fn block(&self, mac: &[u8; 6], bits: u32) -> Option<String> {
        let n = number(mac);
        let key = if bits == 0 { 0 } else { n & !((1u64 << (48 - bits)) - 1) };
        let &name = self.blocks.get(&key)?;
        let whole = (bits / 8) as usize;
        let mut tail = mac[whole..].to_vec();
        tail[0] &= 0xff >> (bits % 8);
        Some(format!("{}_{}", self.name(name), hex(&tail)))
    }

    fn vendor(&self, mac: &[u8; 6]) -> Option<String> {
        let &name = self.vendors.get(&((number(mac) >> 24) as u32))?;
        Some(format!("{}_{}", self.name(name), hex(&mac[3..])))
    }
}

impl Clone for MacNames {
    fn clone(&self) -> Self {
        MacNames {
            on: self.on,
            small: self.small.clone(),
            manuf: self.manuf.clone(),
            parsed: RefCell::default(),
        }
    }
}

impl MacNames {
    /// No names: every address as its six bytes (tshark -n).
    pub fn numeric() -> Self {
        MacNames::default()
    }

    /// The built-in table only.
    pub fn builtin() -> Self {
        MacNames {
            on: true,
            small: vec![BUILTIN.to_owned()],
            ..MacNames::default()
        }
    }

    /// Wireshark's files' texts: `manuf` (vendor prefixes and blocks), `wka` (well-known addresses and blocks)
    /// and `ethers` (a host's own names, which win).
    pub fn wireshark(manuf: String, wka: String, ethers: String) -> Self {
        MacNames {
            on: true,
            small: vec![wka, ethers],
            manuf,
            parsed: RefCell::default(),
        }
    }

    /// The address as Wireshark's Source and Destination columns show it.
    pub fn name(&self, mac: &[u8; 6]) -> String {
        if !self.on {
            return fmt_mac(mac);
        }
        let mut parsed = self.parsed.borrow_mut();
        let Parsed { small, manuf } = &mut *parsed;
        let small = small.get_or_insert_with(|| {
            let mut t = Tables::default();
            for text in &self.small {
                t.add(text.lines());
            }
            t
        });
        let oui = (number(mac) >> 24) as u32;
        let vendor = manuf.entry(oui).or_insert_with(|| self.manuf_lines(mac));
        // The small files were read after manuf: their entries win on the same key.
        if let Some(&name) = small.exact.get(mac) {
            return small.name(name).to_owned();
        }
        if *mac == [0xff; 6] {
            return "Broadcast".to_owned();
        }
        let tables = [&*small, &*vendor];
        (24..48)
            .rev()
            .find_map(|bits| tables.iter().find_map(|t| t.block(mac, bits)))
            .or_else(|| tables.iter().find_map(|t| t.vendor(mac)))
            .or_else(|| (0..24).rev().find_map(|bits| small.block(mac, bits)))
            .unwrap_or_else(|| fmt_mac(mac))
    }

    /// `manuf`'s entries for the vendor prefix of `mac`: every line that starts with it (`00:50:56`, as the file
    /// writes them), found by a text search. Every `manuf` entry is 24 bits or longer, so no other line can match.
    fn manuf_lines(&self, mac: &[u8; 6]) -> Tables {
        let mut t = Tables::default();
        if self.manuf.is_empty() {
            return t;
        }
        let prefix = format!("{:02X}:{:02X}:{:02X}", mac[0], mac[1], mac[2]);
        let text = self.manuf.as_str();
        let needle = format!("\n{prefix}");
        let starts = text
            .match_indices(&needle)
            .map(|(i, _)| i + 1)
            .chain(text.starts_with(&prefix).then_some(0));
        t.add(starts.map(|i| text[i..].lines().next().unwrap_or_default()));
        t
    }
}

/// Bytes as `xx:yy:zz`.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, b) in bytes.iter().enumerate() {
        let _ = write!(out, "{}{b:02x}", if i > 0 { ":" } else { "" });
    }
    out
}

/// An address as a 48-bit number.
fn number(mac: &[u8; 6]) -> u64 {
    let mut n = [0u8; 8];
    n[2..].copy_from_slice(mac);
    u64::from_be_bytes(n)
}

/// `00:50:56`, `01-00-5E/25`, `00:1B:C5:00:00:00/36`: the bytes (zero-padded to six), how many were written,
/// and the mask.
fn parse_prefix(s: &str) -> Option<([u8; 6], usize, Option<u32>)> {
    let (addr, mask) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m.parse::<u32>().ok().filter(|m| *m <= 48)?)),
        None => (s, None),
    };
    let mut bytes = [0u8; 6];
    let mut len = 0;
    for part in addr.split([':', '-', '.']) {
        if len == 6 || part.is_empty() || part.len() > 2 {
            return None;
        }
        bytes[len] = u8::from_str_radix(part, 16).ok()?;
        len += 1;
    }
    Some((bytes, len, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as Wireshark 4.0's files hold them (manuf, wka); each expected name is what tshark 4.0 printed for
    /// that address with the installed files.
    const MANUF: &str = "\
00:00:00\t00:00:00\tOfficially Xerox, but 0:0:0:0:0:0 is more common
00:1B:C5:00:00:00/36\tConvergi\tConverging Systems Inc.
00:50:56\tVMware\tVMware, Inc.
00:55:DA\tIEEERegi\tIEEE Registration Authority
00:55:DA:00:00:00/28\tShinkoTe\tShinko Technos co.,ltd.
00:55:DA:20:00:00/28\tBeijingC\tBeijing Connected Information Technology Co.,Ltd.
00:55:DA:F0:00:00/28\tPrivate
";
    const WKA: &str = "\
00-00-00-00-FE-21\tCheckpoint-Uninitialized-Cluster-Member
00-00-0C-07-AC/40\tAll-HSRP-routers
01-00-5E/25\t\tIPv4mcast
02-04-96-00-00-00/24\tExtremeNetworks
03-00-00-00-00-01\tNETBIOS-# [TR?]
01-80-C2-00-00-00/44\tSpanning-tree-(for-bridges)
33-33-00-00-00-00\tIPv6-Neighbor-Discovery
33-33-00-00-00-00/16\tIPv6mcast
";

    fn mac(s: &str) -> [u8; 6] {
        let (bytes, len, _) = parse_prefix(s).expect("a MAC");
        assert_eq!(len, 6);
        bytes
    }

    #[test]
    fn names_are_tsharks() {
        let names = MacNames::wireshark(MANUF.into(), WKA.into(), String::new());
        for (addr, want) in [
            ("00:50:56:c0:00:08", "VMware_c0:00:08"),
            ("00:50:56:00:00:00", "VMware_00:00:00"),
            ("00:1b:c5:00:00:01", "Convergi_01"),
            ("00:1b:c5:00:0f:ff", "Convergi_0f:ff"),
            ("00:1b:c5:00:00:00", "Convergi_00"),
            ("00:55:da:01:00:00", "ShinkoTe_01:00:00"),
            ("00:55:da:00:01:00", "ShinkoTe_01:00"),
            ("00:55:da:00:00:05", "ShinkoTe_05"),
            ("00:55:da:f0:12:34", "Private_12:34"),
            ("00:55:da:20:00:01", "BeijingC_01"),
            ("00:1b:c5:ff:ff:ff", "Convergi_ff:ff:ff"),
            ("01:00:5e:80:00:01", "IPv4mcast_80:00:01"),
            ("01:80:c2:00:00:00", "Spanning-tree-(for-bridges)_00"),
            ("01:80:c2:12:34:56", "Spanning-tree-(for-bridges)_12:34:56"),
            ("33:33:00:00:00:00", "IPv6-Neighbor-Discovery"),
            ("33:33:ff:00:00:01", "IPv6mcast_ff:00:00:01"),
            ("33:33:00:00:00:01", "IPv6mcast_01"),
            ("00:00:0c:07:ac:05", "All-HSRP-routers_05"),
            ("01:00:5e:7f:00:01", "IPv4mcast_7f:00:01"),
            ("02:04:96:00:01:05", "ExtremeNetworks_01:05"),
            ("00:00:00:00:fe:21", "Checkpoint-Uninitialized-Cluster-Member"),
            ("00:00:00:12:34:56", "00:00:00_12:34:56"),
            ("03:00:00:00:00:01", "NETBIOS-"),
            ("ff:ff:ff:ff:ff:ff", "Broadcast"),
            ("02:aa:00:00:00:01", "02:aa:00:00:00:01"),
        ] {
            assert_eq!(names.name(&mac(addr)), want, "{addr}");
        }
    }

    #[test]
    fn ethers_names_win_and_numeric_names_nothing() {
        let names = MacNames::wireshark(MANUF.into(), WKA.into(), "00:50:56:c0:00:08 vmnet8-host\n".into());
        assert_eq!(names.name(&mac("00:50:56:c0:00:08")), "vmnet8-host");
        let numeric = MacNames::numeric();
        assert_eq!(numeric.name(&mac("00:50:56:c0:00:08")), "00:50:56:c0:00:08");
        assert_eq!(numeric.name(&[0xff; 6]), "ff:ff:ff:ff:ff:ff");
    }

    #[test]
    fn the_builtin_table_names_the_virtual_nics() {
        let names = MacNames::builtin();
        assert_eq!(names.name(&mac("00:0c:29:aa:bb:cc")), "VMware_aa:bb:cc");
        assert_eq!(names.name(&mac("08:00:27:12:34:56")), "PcsCompu_12:34:56");
        assert_eq!(names.name(&mac("52:54:00:12:34:56")), "RealtekU_12:34:56");
        assert_eq!(names.name(&mac("33:33:00:00:00:01")), "IPv6mcast_01");
        assert_eq!(names.name(&mac("0a:00:27:00:00:00")), "0a:00:27:00:00:00");
    }
}
