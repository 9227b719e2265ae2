//! Builds the kernel programs (observer-ebpf, nightly, bpfel-unknown-none) into OUT_DIR for include_bytes.
//!
//! aya-build forwards every line of the nested cargo's output as a `cargo:warning`, so a clean build would
//! print ~40 warnings. Its stdout is captured instead: on success only the `cargo:rerun-if-*` directives pass
//! through; on failure the whole output goes to stderr, which cargo shows.
use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, anyhow};

fn main() {
    // The error as one line: anyhow's `Result` from main would add a backtrace under RUST_BACKTRACE.
    if let Err(e) = build() {
        eprintln!("error: building the kernel programs: {e:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("observer-ebpf manifest has no parent"))?
        .as_str()
        .to_owned();
    let (result, output) = with_stdout_captured(|| {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "observer-ebpf",
                root_dir: &root_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    })?;
    if result.is_err() {
        let message: String = output
            .lines()
            .map(|l| l.strip_prefix("cargo:warning=").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        eprint!("{message}");
        return result;
    }
    for directive in output.lines().filter(|l| l.starts_with("cargo:rerun-if-")) {
        println!("{directive}");
    }
    Ok(())
}

/// Runs `f` with the process's stdout (fd 1) pointed at a temporary file; returns its result and what it printed.
fn with_stdout_captured<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, String)> {
    let out_dir = std::env::var_os("OUT_DIR").context("OUT_DIR not set")?;
    let path = std::path::Path::new(&out_dir).join("ebpf-build.log");
    let mut log = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::stdout().flush().context("flushing stdout")?;
    // SAFETY: dup and dup2 on descriptors this process owns; fd 1 is restored before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(log.as_raw_fd(), 1) } < 0 {
        anyhow::bail!("dup2 of stdout: {}", std::io::Error::last_os_error());
    }
    let result = f();
    let flushed = std::io::stdout().flush();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    flushed.context("flushing the captured stdout")?;
    let mut output = String::new();
    log.rewind().context("rewinding the build log")?;
    log.read_to_string(&mut output).context("reading the build log")?;
    Ok((result, output))
}
