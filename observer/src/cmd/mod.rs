//! One module per subcommand: builds the sources, the analysis and the output, runs the loop, maps errors to
//! exit statuses.

pub mod compare;
pub mod exit;
pub mod live;
pub mod netstat;
pub mod queues;
pub mod watch;

/// The MAC address names of a line view: none with `numeric`; else Wireshark's, from its files where it is
/// installed (so that lines equal tshark's), or the built-in table.
pub fn mac_names(numeric: bool) -> crate::view::names::MacNames {
    use crate::view::names::MacNames;
    if numeric {
        return MacNames::numeric();
    }
    let read = |path: &str| std::fs::read_to_string(path).ok();
    match read("/usr/share/wireshark/manuf") {
        Some(manuf) => MacNames::wireshark(
            manuf,
            read("/usr/share/wireshark/wka").unwrap_or_default(),
            read("/etc/ethers").unwrap_or_default(),
        ),
        None => MacNames::builtin(),
    }
}
