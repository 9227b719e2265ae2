//! Checks made before touching the kernel, so that the common mistakes get a one-line answer.

use std::{fs, io, path::Path};

/// Capability bit numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// A problem found before loading anything.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Missing privileges.
    #[error("observer needs CAP_BPF and CAP_NET_ADMIN (missing: {missing}); run it as root, e.g. `sudo observer`")]
    NotPrivileged {
        /// The missing capabilities, comma separated.
        missing: String,
    },
    /// The interface does not exist.
    #[error("unknown interface {name:?}; interfaces here: {}", available.join(", "))]
    UnknownInterface {
        /// The name asked for.
        name: String,
        /// The interfaces that exist.
        available: Vec<String>,
    },
    /// No default route to take the interface from.
    #[error("no default route to pick an interface from; pass --iface (interfaces here: {})", available.join(", "))]
    NoDefaultRoute {
        /// The interfaces that exist.
        available: Vec<String>,
    },
    /// The kernel lacks a feature observer needs (the sentinel callers test for).
    #[error("{feature} needs Linux {needs} or later and this kernel ({kernel}) lacks it{fix}")]
    FeatureMissing {
        /// What is missing.
        feature: &'static str,
        /// The first Linux release with it.
        needs: &'static str,
        /// This kernel's release.
        kernel: String,
        /// What to do instead, with its leading separator, or empty.
        fix: &'static str,
    },
    /// Reading a /proc or /sys file failed.
    #[error("reading {path} failed: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn read(path: &str) -> Result<String, PreflightError> {
    fs::read_to_string(path).map_err(|source| PreflightError::Read {
        path: path.into(),
        source,
    })
}

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_capabilities() -> Result<u64, PreflightError> {
    let status = read("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("0");
    Ok(u64::from_str_radix(hex, 16).unwrap_or(0))
}

/// Fails unless the process may load BPF programs and attach them to interfaces.
pub fn check_privileges() -> Result<(), PreflightError> {
    missing_capabilities(effective_capabilities()?)
}

/// The check behind [`check_privileges`], on a given capability set.
pub fn missing_capabilities(caps: u64) -> Result<(), PreflightError> {
    let has = |bit: u32| caps & (1 << bit) != 0;
    let mut missing = Vec::new();
    // CAP_SYS_ADMIN covers CAP_BPF on every kernel.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (to load the eBPF programs)");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (to attach them to the interface)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged {
            missing: missing.join(", "),
        })
    }
}

/// A kernel feature the capture needs, probed at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// BPF_MAP_TYPE_RINGBUF (Linux 5.8), where every record goes.
    RingBuf,
    /// bpf_xdp_load_bytes (Linux 5.18), through which XDP reads TCP options and the frame's headers.
    XdpLoadBytes,
}

impl Feature {
    fn missing(self) -> PreflightError {
        let (feature, needs, fix) = match self {
            Feature::RingBuf => ("the BPF ring buffer", "5.8", ""),
            Feature::XdpLoadBytes => ("XDP's bpf_xdp_load_bytes", "5.18", "; use --hook tc"),
        };
        PreflightError::FeatureMissing {
            feature,
            needs,
            kernel: kernel_release(),
            fix,
        }
    }

    /// Whether this kernel has the feature, asked of the kernel itself (a tiny program or map), not of its version.
    fn probe(self) -> bool {
        use aya::{maps::MapType, programs::ProgramType, sys};
        match self {
            Feature::RingBuf => sys::is_map_supported(MapType::RingBuf).unwrap_or(false),
            Feature::XdpLoadBytes => {
                sys::is_helper_supported(ProgramType::Xdp, sys::BpfHelper::BPF_FUNC_xdp_load_bytes).unwrap_or(false)
            }
        }
    }
}

/// Fails with the feature, the release that brought it and this kernel's when one of `features` is missing.
pub fn check_features(features: &[Feature]) -> Result<(), PreflightError> {
    match features.iter().find(|f| !f.probe()) {
        Some(f) => Err(f.missing()),
        None => Ok(()),
    }
}

/// This kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |r| r.trim().to_owned())
}

/// Names of the network interfaces in this namespace, sorted.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Fails with the list of real interfaces when `name` is not one of them.
pub fn check_interface(name: &str) -> Result<(), PreflightError> {
    if Path::new("/sys/class/net").join(name).exists() && !name.contains('/') && !name.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::UnknownInterface {
            name: name.into(),
            available: interfaces(),
        })
    }
}

/// The interface of the default route (IPv4 first, then IPv6).
pub fn default_route_interface() -> Result<String, PreflightError> {
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_route_from(&v4, &v6).ok_or_else(|| PreflightError::NoDefaultRoute {
        available: interfaces(),
    })
}

/// Picks the default route's interface from the text of /proc/net/route and /proc/net/ipv6_route.
pub fn default_route_from(route: &str, ipv6_route: &str) -> Option<String> {
    const RTF_UP: u32 = 1;
    let v4 = route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000") && flags & RTF_UP != 0)
            .then(|| f[0].to_string())
    });
    v4.or_else(|| {
        ipv6_route.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let zero = "0".repeat(32);
            (f.len() == 10 && f[0] == zero && f[1] == "00" && f[9] != "lo").then(|| f[9].to_string())
        })
    })
}

/// Whether an interface is a loopback device (ARPHRD_LOOPBACK), where every packet passes TC twice: out, then in.
pub fn is_loopback(name: &str) -> bool {
    const ARPHRD_LOOPBACK: &str = "772";
    read(&format!("/sys/class/net/{name}/type")).is_ok_and(|t| t.trim() == ARPHRD_LOOPBACK)
}

/// The index of an interface, or 0 when it does not exist.
pub fn ifindex(name: &str) -> u32 {
    read(&format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The name of interface `ifindex` in the agent's network namespace (`if_indextoname(3)`).
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_what_is_missing() {
        assert!(missing_capabilities(1 << CAP_BPF | 1 << CAP_NET_ADMIN).is_ok());
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN).is_ok());
        let e = missing_capabilities(1 << CAP_BPF).unwrap_err().to_string();
        assert!(
            e.contains("missing: CAP_NET_ADMIN (to attach them to the interface)") && e.contains("sudo"),
            "{e}"
        );
        let e = missing_capabilities(0).unwrap_err().to_string();
        assert!(
            e.contains("missing: CAP_BPF (to load the eBPF programs), CAP_NET_ADMIN (to attach"),
            "{e}"
        );
    }

    #[test]
    fn default_route_is_found_in_proc_text() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_from(route, "").as_deref(), Some("eth1"));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     wlan0\n";
        assert_eq!(default_route_from("", v6).as_deref(), Some("wlan0"));
        assert_eq!(default_route_from("Iface\n", ""), None);
    }

    #[test]
    fn a_missing_feature_names_itself_the_release_and_the_fix() {
        let e = Feature::XdpLoadBytes.missing().to_string();
        assert!(
            e.starts_with("XDP's bpf_xdp_load_bytes needs Linux 5.18 or later and this kernel ("),
            "{e}"
        );
        assert!(
            e.ends_with(") lacks it; use --hook tc") && e.contains(&kernel_release()),
            "{e}"
        );
        assert!(Feature::RingBuf.missing().to_string().ends_with("lacks it"));
    }

    #[test]
    fn unknown_interface_lists_the_real_ones() {
        let e = check_interface("no-such-if0").unwrap_err().to_string();
        assert!(e.contains("no-such-if0") && e.contains("lo"), "{e}");
        assert!(check_interface("lo").is_ok());
        assert!(check_interface("../lo").is_err());
    }
}
