//! Running external commands (shown as `$ cmd args` or captured) and finding programs.
use std::env;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

/// Renders a command as one shell-like line, environment overrides first.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let program = cmd.get_program();
    let program = if env::var_os("CARGO").is_some_and(|cargo| cargo == program) {
        OsStr::new("cargo")
    } else {
        program
    };
    let words = std::iter::once(program).chain(cmd.get_args()).map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Shows and runs a command, failing with an error that names it when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    check(cmd, status)
}

/// Shows and runs a command, returning its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let line = display(cmd);
    eprintln!("$ {line}");
    cmd.status().with_context(|| format!("cannot start `{line}`"))
}

/// Shows and runs a command with `input` on its stdin, failing like [`run`].
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ printf '%s\\n' {} | {line}", quote(OsStr::new(input.trim_end())));
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    child
        .stdin
        .take()
        .context("stdin was not piped")?
        .write_all(input.as_bytes())
        .with_context(|| format!("cannot write to `{line}`"))?;
    let status = child.wait().with_context(|| format!("cannot wait for `{line}`"))?;
    check(cmd, status)
}

/// Runs a command quietly and returns its stdout; a non-zero exit is an error naming it.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        match stderr.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(last) => bail!("`{line}` failed ({}): {last}", out.status),
            None => bail!("`{line}` failed ({})", out.status),
        }
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Shows a command and replaces this process with it, so its exit status and signals are its own.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start `{line}`"))
}

fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// A `cargo` command (the one running xtask) in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root directory.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."))
}

/// Cargo's home directory (`$CARGO_HOME`, else `~/.cargo`).
pub fn cargo_home() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) => home.into(),
        None => Path::new(&env::var_os("HOME").unwrap_or_default()).join(".cargo"),
    }
}

/// Finds an executable by name in `$PATH`, then in `extra` directories.
pub fn which(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| is_executable(file))
}

fn is_executable(file: &Path) -> bool {
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs with effective user id 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// Joins words with spaces.
pub fn words<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}
