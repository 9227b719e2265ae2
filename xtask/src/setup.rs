//! `cargo xtask setup`: checks the build and test prerequisites and installs what is missing.
//! It reports on stderr, so that `cargo xtask run -- --json` keeps stdout to the agent.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::cmd::{self, capture, cargo, cargo_home, run, which};

/// A bpf-linker release that loads rustc's own LLVM of one major version through a default feature.
struct LinkerRelease {
    llvm_major: u32,
    version: &'static str,
    feature: &'static str,
}

/// Known LLVM major → bpf-linker pairs; 0.11 and later need a system LLVM instead.
const BPF_LINKERS: &[LinkerRelease] = &[LinkerRelease {
    llvm_major: 22,
    version: "0.10.3",
    feature: "rust-llvm-22",
}];

/// Commands the tests and benches run, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("netstat", "net-tools"),
    ("ss", "iproute2"),
    ("tshark", "tshark"),
    ("tcpdump", "tcpdump"),
    ("socat", "socat"),
    ("nft", "nftables"),
    ("hping3", "hping3"),
    ("ping", "iputils-ping"),
    // The bench's whole-pipeline scenarios: iperf3 on the wire, nginx and wrk for churn.
    ("iperf3", "iperf3"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    // The kernel matrix (`cargo xtask test --kernel`): qemu boots Debian kernels from a busybox initramfs.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
];

/// Commands the tests and benches run that a fresh machine already has, with their Debian package (each
/// package is checked against `../shared/fresh-machine-apt.txt` by a test).
#[cfg(test)]
const FRESH: &[(&str, &str)] = &[
    ("apt-cache", "apt"),
    ("apt-get", "apt"),
    ("bash", "bash"),
    ("cat", "coreutils"),
    ("debconf-set-selections", "debconf"),
    ("dpkg-deb", "dpkg"),
    ("find", "findutils"),
    ("gzip", "gzip"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("nstat", "iproute2"),
    ("setpriv", "util-linux"),
    ("sysctl", "procps"),
    ("tc", "iproute2"),
    ("timeout", "coreutils"),
    ("time", "time"),
    ("umount", "mount"),
    ("rustup", "(rustup, not a Debian package)"),
];

/// Directories searched for the tools besides `$PATH` (a non-root `$PATH` often lacks them).
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];

/// What the checks found and did, for the closing line.
#[derive(Default)]
struct Outcome {
    acted: bool,
    present: Vec<String>,
    missing: Vec<String>,
}

/// Checks the toolchains, bpf-linker and test tools, installing what is missing; prints one line when all is present.
pub fn setup() -> Result<()> {
    let mut outcome = Outcome::default();
    let nightly = rust_toolchains(&mut outcome)?;
    bpf_linker(&nightly, &mut outcome)?;
    debian_tools(&mut outcome)?;
    let present = outcome.present.join(", ");
    match (outcome.acted, outcome.missing.is_empty()) {
        (false, true) => eprintln!("setup: all present ({present})"),
        (true, true) => eprintln!("setup: done ({present})"),
        (_, false) => eprintln!("setup: done; still missing {}", outcome.missing.join(", ")),
    }
    Ok(())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(cmd::workspace_root());
    cmd
}

/// The nightly toolchain's host triple and LLVM version, from `rustc -vV`.
struct Nightly {
    host: String,
    llvm: String,
}

fn rust_toolchains(outcome: &mut Outcome) -> Result<Nightly> {
    if which("rustup", &[]).is_none() {
        bail!("rustup not found on PATH: install it from https://rustup.rs, then run `cargo xtask setup` again");
    }
    let toolchains = capture(rustup().args(["toolchain", "list"]))?;
    if !toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(is_plain_nightly)
    {
        eprintln!("setup: no nightly toolchain (the eBPF crate builds with it); installing");
        run(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
        outcome.acted = true;
    }
    let info = capture(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("`rustup run nightly rustc -vV` printed no `{key}` line"))
    };
    let nightly = Nightly {
        host: field("host:")?,
        llvm: field("LLVM version:")?,
    };
    components(
        Some("nightly"),
        &["rust-src", "clippy"],
        "rust-src for -Z build-std=core, clippy for the eBPF crate's lint",
        &nightly.host,
        outcome,
    )?;
    outcome.present.push("nightly with rust-src and clippy".into());
    components(
        None,
        &["clippy", "rustfmt"],
        "used by `cargo xtask test`",
        &nightly.host,
        outcome,
    )?;
    outcome.present.push("clippy, rustfmt".into());
    Ok(nightly)
}

/// Adds the `wanted` components that `toolchain` (the active one if `None`) lacks; `why` goes into the message.
fn components(toolchain: Option<&str>, wanted: &[&str], why: &str, host: &str, outcome: &mut Outcome) -> Result<()> {
    let with_toolchain = |cmd: &mut Command| {
        if let Some(t) = toolchain {
            cmd.args(["--toolchain", t]);
        }
    };
    let mut list = rustup();
    list.args(["component", "list", "--installed"]);
    with_toolchain(&mut list);
    let installed = capture(&mut list)?;
    let lacking: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !has_component(&installed, c, host))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    let name = toolchain.unwrap_or("the build toolchain");
    eprintln!("setup: {name} lacks {} ({why}); adding", lacking.join(", "));
    let mut add = rustup();
    add.args(["component", "add"]);
    with_toolchain(&mut add);
    run(add.args(&lacking))?;
    outcome.acted = true;
    Ok(())
}

/// `nightly-<host>`, not a dated `nightly-YYYY-MM-DD-<host>` (aya-build runs `rustup run nightly`).
fn is_plain_nightly(name: &str) -> bool {
    name.strip_prefix("nightly-")
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Whether `rustup component list --installed` output holds `name` or `name-<host>`.
fn has_component(list: &str, name: &str, host: &str) -> bool {
    list.lines().map(str::trim).any(|l| {
        l == name
            || l.strip_prefix(name)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|r| r == host)
    })
}

fn bpf_linker(nightly: &Nightly, outcome: &mut Outcome) -> Result<()> {
    let llvm = nightly.llvm.as_str();
    let major: u32 = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major from nightly's `LLVM version: {llvm}`"))?;
    let Some(want) = BPF_LINKERS.iter().find(|r| r.llvm_major == major) else {
        let known: Vec<String> = BPF_LINKERS
            .iter()
            .map(|r| format!("LLVM {} → bpf-linker {} ({})", r.llvm_major, r.version, r.feature))
            .collect();
        bail!(
            "nightly uses LLVM {llvm} and no known bpf-linker release matches it (known: {}); \
             use a nightly with a listed LLVM or add the pair to xtask/src/setup.rs",
            known.join("; ")
        );
    };

    let installed = cargo_home().join("bin").join("bpf-linker");
    let mismatch = match which("bpf-linker", &[]) {
        None if installed.exists() => bail!(
            "bpf-linker is installed at {} but {} is not on PATH: add it (`source {}`)",
            installed.display(),
            installed.parent().unwrap_or(Path::new("")).display(),
            cargo_home().join("env").display()
        ),
        None => Some("not found on PATH".to_owned()),
        Some(found) => linker_mismatch(&found, &installed, want)?,
    };
    if let Some(reason) = mismatch {
        eprintln!(
            "setup: bpf-linker {reason}; nightly's LLVM {llvm} needs bpf-linker {} ({}); installing (about 90 s)",
            want.version, want.feature
        );
        let spec = format!("bpf-linker@{}", want.version);
        run(cargo().args(["install", &spec, "--locked", "--force"]))?;
        outcome.acted = true;
        match which("bpf-linker", &[]) {
            Some(found) => {
                if let Some(reason) = linker_mismatch(&found, &installed, want)? {
                    bail!("after `cargo install {spec}`: bpf-linker {reason}");
                }
            }
            None => bail!("after `cargo install {spec}`, bpf-linker is still not on PATH"),
        }
    }
    outcome.present.push(format!(
        "bpf-linker {} ({}) for LLVM {major}",
        want.version, want.feature
    ));
    Ok(())
}

/// Why the bpf-linker at `found` is not the wanted release, or `None` when it is.
fn linker_mismatch(found: &Path, installed: &Path, want: &LinkerRelease) -> Result<Option<String>> {
    if !same_file(found, installed) {
        return Ok(Some(format!(
            "at {} is not the one cargo installs ({})",
            found.display(),
            installed.display()
        )));
    }
    let out = capture(Command::new(found).arg("--version"))?;
    let version = out.split_whitespace().nth(1).unwrap_or("unknown");
    if version != want.version {
        return Ok(Some(format!("is version {version}")));
    }
    let record = install_record(version)?;
    let Some(record) = record else {
        return Ok(Some(format!("{version} has no record in {}", crates2_path().display())));
    };
    Ok(features_mismatch(&record, want))
}

/// Why a `.crates2.json` install record lacks the wanted feature, or `None` when it has it.
fn features_mismatch(record: &Value, want: &LinkerRelease) -> Option<String> {
    let features: Vec<&str> = record["features"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let no_default = record["no_default_features"].as_bool().unwrap_or(false);
    (no_default && !features.contains(&want.feature)).then(|| {
        format!(
            "{} was installed with --no-default-features and features [{}], without {}",
            want.version,
            features.join(", "),
            want.feature
        )
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn crates2_path() -> PathBuf {
    cargo_home().join(".crates2.json")
}

/// The `cargo install` record of bpf-linker `version` from `.crates2.json`, if any.
fn install_record(version: &str) -> Result<Option<Value>> {
    let path = crates2_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let json: Value = serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let prefix = format!("bpf-linker {version} ");
    Ok(json["installs"]
        .as_object()
        .and_then(|installs| installs.iter().find(|(key, _)| key.starts_with(&prefix)))
        .map(|(_, record)| record.clone()))
}

fn debian_tools(outcome: &mut Outcome) -> Result<()> {
    let missing_packages = || {
        let mut packages: Vec<&str> = Vec::new();
        for (command, package) in TOOLS {
            if which(command, SBIN).is_none() && !packages.contains(package) {
                packages.push(package);
            }
        }
        packages
    };
    let packages = missing_packages();
    if packages.is_empty() {
        outcome.present.push(format!("{} test tools", TOOLS.len()));
        return Ok(());
    }
    let list = cmd::words(&packages);
    if !cmd::is_root() || which("apt-get", SBIN).is_none() {
        let why = if cmd::is_root() { "no apt-get here" } else { "not root" };
        eprintln!(
            "setup: missing Debian packages {list}; {why}, so install them yourself \
             (`sudo apt-get install -y {list}`); the tests that need them will report"
        );
        outcome.missing.extend(packages.iter().map(|p| p.to_string()));
        return Ok(());
    }
    eprintln!("setup: installing missing Debian packages: {list}");
    run(Command::new("apt-get").arg("update"))?;
    if packages.contains(&"tshark") && which("debconf-set-selections", SBIN).is_some() {
        cmd::run_with_input(
            &mut Command::new("debconf-set-selections"),
            "wireshark-common wireshark-common/install-setuid boolean false\n",
        )?;
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&packages))?;
    outcome.acted = true;
    let still = missing_packages();
    if !still.is_empty() {
        bail!(
            "apt-get installed {list}, yet commands from {} are still not found",
            cmd::words(&still)
        );
    }
    outcome.present.push(format!("{} test tools", TOOLS.len()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program names the sources start: `Command::new("x")`, `.command("x")` (a namespace's), `tool(.., "x")`.
    fn programs_started(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    programs_started(&path, found);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.ends_with("xtask/src/setup.rs") {
                // This test's own patterns are not commands.
                text.truncate(text.find("mod tests {").unwrap_or(text.len()));
            }
            for opener in ["Command::new(\"", ".command(\""] {
                for (at, _) in text.match_indices(opener) {
                    let name: String = text[at + opener.len()..].chars().take_while(|&c| c != '"').collect();
                    found.push((name, path.clone()));
                }
            }
            // `require::tool(test, "x")`: the last argument.
            for (at, _) in text.match_indices("require::tool(") {
                let call = text[at..].split(')').next().unwrap_or_default();
                let name = call.rsplit(',').next().unwrap_or_default().trim();
                // A name from a variable (`tool(name, t)` over a list) is found through the list's literals.
                if let Some(name) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                    found.push((name.to_owned(), path.clone()));
                }
            }
        }
    }

    #[test]
    fn every_command_the_tests_run_is_on_a_fresh_machine_or_installed_by_setup() {
        let root = cmd::workspace_root();
        let mut found = Vec::new();
        for dir in ["tests", "xtask", "observer"] {
            programs_started(&root.join(dir), &mut found);
        }
        assert!(
            found.iter().any(|(p, _)| p == "tshark"),
            "the scan found no commands: {found:?}"
        );
        let known = |p: &str| TOOLS.iter().chain(FRESH).any(|(c, _)| *c == p);
        let unknown: Vec<String> = found
            .iter()
            .filter(|(p, _)| !known(p))
            .map(|(p, f)| format!("`{p}` in {}", f.display()))
            .collect();
        assert!(
            unknown.is_empty(),
            "commands neither on a fresh machine (FRESH) nor installed by setup (TOOLS): {}",
            unknown.join(", ")
        );
        let fresh_list = root.join("../shared/fresh-machine-apt.txt");
        let Ok(text) = std::fs::read_to_string(&fresh_list) else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{} is missing; CI=true, so this is a failure",
                fresh_list.display()
            );
            eprintln!("skipped the package check: {} is missing", fresh_list.display());
            return;
        };
        let fresh: Vec<&str> = text.lines().map(str::trim).collect();
        let absent: Vec<String> = FRESH
            .iter()
            .filter(|(c, pkg)| *c != "rustup" && !fresh.contains(pkg))
            .map(|(c, pkg)| format!("{c} ({pkg})"))
            .collect();
        assert!(
            absent.is_empty(),
            "FRESH names packages a fresh machine lacks: {}",
            absent.join(", ")
        );
    }

    const WANT: LinkerRelease = LinkerRelease {
        llvm_major: 22,
        version: "0.10.3",
        feature: "rust-llvm-22",
    };

    #[test]
    fn plain_nightly_only() {
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly("nightly-2026-05-19-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn components_match_whole_names() {
        let host = "x86_64-unknown-linux-gnu";
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustfmt-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src", host));
        assert!(has_component(list, "rustfmt", host));
        assert!(!has_component(list, "clippy", host));
        assert!(!has_component("rust-std-x86_64-unknown-linux-gnu\n", "rust", host));
    }

    #[test]
    fn default_features_carry_the_rust_llvm_feature() {
        let record = serde_json::json!({"features": [], "no_default_features": false});
        assert_eq!(features_mismatch(&record, &WANT), None);
        let record = serde_json::json!({"features": ["rust-llvm-22"], "no_default_features": true});
        assert_eq!(features_mismatch(&record, &WANT), None);
        let record = serde_json::json!({"features": ["llvm-22"], "no_default_features": true});
        assert!(features_mismatch(&record, &WANT).is_some());
    }
}
