//! The build, run, test and bench tasks; each runs `setup` first.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, capture, cargo, run as run_cmd};
use crate::setup::setup;

/// Builds observer, with the release profile when `release`.
pub fn build(release: bool) -> Result<()> {
    setup()?;
    build_observer(release)
}

fn build_observer(release: bool) -> Result<()> {
    run_cmd(
        cargo()
            .args(["build", "-p", "observer"])
            .args(release.then_some("--release")),
    )
}

/// Builds observer (release) and replaces this process with it, through `sudo -E` when not root.
pub fn run(args: &[OsString]) -> Result<()> {
    setup()?;
    build_observer(true)?;
    let binary = target_dir()?.join("release").join("observer");
    let mut command = if cmd::is_root() {
        Command::new(&binary)
    } else if let Some(sudo) = cmd::which("sudo", &["/usr/bin", "/bin"]) {
        let mut sudo = Command::new(sudo);
        sudo.arg("-E").arg(&binary);
        sudo
    } else {
        eprintln!("run: not root and no sudo; running observer directly");
        Command::new(&binary)
    };
    cmd::exec(command.args(args))
}

/// The target directory cargo uses for this workspace (honours `CARGO_TARGET_DIR` and config).
fn target_dir() -> Result<PathBuf> {
    let out = capture(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value = serde_json::from_str(&out).context("cannot parse `cargo metadata` output")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// Runs the workspace tests, clippy and the rustfmt check, all of them, and summarises which passed.
pub fn test() -> Result<()> {
    setup()?;
    // observer-ebpf only builds for bpfel-unknown-none: observer's build.rs builds it.
    let steps = [
        // The end-to-end tests run the real agent binary, which `cargo test` alone does not build.
        ("build observer", cargo_with(&["build", "-p", "observer"])),
        (
            "cargo test",
            cargo_with(&["test", "--workspace", "--exclude", "observer-ebpf", "--no-fail-fast"]),
        ),
        (
            "clippy",
            cargo_with(&[
                "clippy",
                "--workspace",
                "--exclude",
                "observer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
        // The eBPF crate only builds for its BPF target, with nightly: lint it there.
        ("clippy (eBPF crate)", ebpf_clippy(&target_dir()?)),
        ("rustfmt check", cargo_with(&["fmt", "--all", "--", "--check"])),
    ];
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for (name, mut command) in steps {
        match cmd::status(&mut command) {
            Ok(status) if status.success() => passed.push(name),
            Ok(status) => {
                eprintln!("test: `{}` failed ({status})", cmd::display(&command));
                failed.push(name);
            }
            Err(e) => {
                eprintln!("test: {e:#}");
                failed.push(name);
            }
        }
    }
    let passed = if passed.is_empty() {
        "none".to_owned()
    } else {
        passed.join(", ")
    };
    if !failed.is_empty() {
        bail!("test FAILED: {} (passed: {passed})", failed.join(", "));
    }
    println!("test: all passed ({passed})");
    Ok(())
}

/// `cargo clippy` of observer-ebpf with nightly for bpfel-unknown-none, in a target directory of its own.
fn ebpf_clippy(target: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args([
            "-Z",
            "build-std=core",
            "--manifest-path",
            "observer-ebpf/Cargo.toml",
            "--target-dir",
        ])
        .arg(target.join("ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .current_dir(cmd::workspace_root());
    command
}

fn cargo_with(args: &[&str]) -> Command {
    let mut command = cargo();
    command.args(args);
    command
}

/// Runs the tests crate's bench binary (release) with `args`, replacing this process.
pub fn bench(args: &[OsString]) -> Result<()> {
    setup()?;
    cmd::exec(
        cargo()
            .args(["run", "--release", "-p", "tests", "--bin", "bench", "--"])
            .args(args),
    )
}
