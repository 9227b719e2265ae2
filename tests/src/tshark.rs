//! tshark, the independent oracle: a live capture on an interface inside a namespace, and a reader for the
//! pcapng files observer writes.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{agent, netns::Netns};

/// TCP preferences every comparison uses: relative sequence numbers and analysis on, desegmentation off (so
/// each Info is one segment's own and no `[TCP segment of a reassembled PDU]` is appended).
pub const TCP_PREFS: [&str; 6] = [
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
    "-o",
    "tcp.analyze_sequence_numbers:TRUE",
    "-o",
    "tcp.relative_sequence_numbers:TRUE",
];

/// `-T fields` arguments printing `fields` tab-separated, every occurrence of a repeated field joined by `,`.
pub fn field_args(fields: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]
    .map(str::to_owned)
    .into();
    for f in fields {
        args.push("-e".to_owned());
        args.push((*f).to_owned());
    }
    args
}

/// Splits `-T fields` lines printed for `fields` into one row per packet, each value by field name
/// (an empty string when the packet lacks the field).
pub fn rows(fields: &[&str], lines: &[String]) -> anyhow::Result<Vec<Row>> {
    lines
        .iter()
        .map(|line| {
            let values: Vec<String> = line.split('\t').map(str::to_owned).collect();
            if values.len() != fields.len() {
                bail!(
                    "tshark printed {} fields, asked for {}: {line:?}",
                    values.len(),
                    fields.len()
                );
            }
            Ok(Row {
                fields: fields.iter().map(|f| (*f).to_owned()).zip(values).collect(),
            })
        })
        .collect()
}

/// One packet as tshark's `-T fields` printed it.
#[derive(Clone, Debug)]
pub struct Row {
    fields: Vec<(String, String)>,
}

impl Row {
    /// The value of `field` (empty when absent); panics when `field` was not asked for, a bug in the test.
    pub fn get(&self, field: &str) -> &str {
        self.fields
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("field {field} was not asked of tshark"))
    }

    /// Whether `field` is present (tshark prints `1` for a present field without a value).
    pub fn has(&self, field: &str) -> bool {
        !self.get(field).is_empty()
    }

    /// The value of a numeric field, `None` when absent or not a number.
    pub fn num(&self, field: &str) -> Option<u64> {
        let v = self.get(field);
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// Every occurrence of a repeated numeric field, in packet order.
    pub fn nums(&self, field: &str) -> Vec<u64> {
        self.get(field).split(',').filter_map(|v| v.parse().ok()).collect()
    }
}

/// `tshark -r <path> -n <args>`: its stdout lines.
pub fn read(path: &Path, args: &[String]) -> anyhow::Result<Vec<String>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .arg("-n")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .context("spawning tshark -r")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// A running live capture with its output lines.
pub struct Tshark {
    child: Child,
    stdout: mpsc::Receiver<String>,
    /// Kept so that its reader thread keeps the pipe open: tshark's last words must not meet SIGPIPE.
    _stderr: mpsc::Receiver<String>,
}

impl Tshark {
    /// Starts `tshark -i <iface> -l -n <args>` in `ns` and waits until it captures.
    pub fn start(ns: &Netns, iface: &str, args: &[String]) -> anyhow::Result<Tshark> {
        Tshark::spawn(ns, iface, true, args)
    }

    /// The same with tshark's default name resolution (MAC vendor names; addresses and ports stay numeric).
    pub fn start_resolving(ns: &Netns, iface: &str, args: &[String]) -> anyhow::Result<Tshark> {
        Tshark::spawn(ns, iface, false, args)
    }

    fn spawn(ns: &Netns, iface: &str, numeric: bool, args: &[String]) -> anyhow::Result<Tshark> {
        let mut child = ns
            .command("tshark")
            .args(["-i", iface, "-l"])
            .args(numeric.then_some("-n"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning tshark")?;
        let stdout = agent::lines(child.stdout.take().context("tshark stdout")?);
        let stderr = agent::lines(child.stderr.take().context("tshark stderr")?);
        let mut said = Vec::new();
        // "Capturing on ..." is printed before dumpcap even starts; "Capture started." once dumpcap has opened the
        // interface and reported its file, from when on every packet is captured.
        while !said.last().is_some_and(|l: &String| l.contains("Capture started")) {
            match stderr.recv_timeout(crate::wait()) {
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("tshark did not start capturing: {said:?}");
                }
            }
        }
        Ok(Tshark {
            child,
            stdout,
            _stderr: stderr,
        })
    }

    /// Appends to `out` the lines tshark prints within `window`.
    pub fn read_for(&mut self, window: Duration, out: &mut Vec<String>) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => return,
            }
        }
    }

    /// Waits (bounded) until tshark printed `count` lines, then stops it and returns every line.
    pub fn stop_after(mut self, count: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < count {
            match self.stdout.recv_timeout(crate::wait()) {
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        got.extend(self.stop());
        got
    }

    /// Stops the capture (SIGINT, so tshark prints what it still holds) and returns the lines not yet read.
    pub fn stop(&mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = agent::wait_bounded(&mut self.child, crate::wait());
        agent::drain(&self.stdout)
    }
}

impl Drop for Tshark {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
