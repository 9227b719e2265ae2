//! `observer netstat`: the socket table as `netstat -ant[Wpeo]`, as `ss -tan` (`--ss`) or as JSON lines.

use std::{
    io::{self, Write as _},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    cli::NetstatArgs,
    sys::sockets::process::ProcessMap,
    table::{Table, netstat, ss},
};

/// `observer netstat`: prints the table as `netstat -ant[Wpeo]`, as `ss -tan` (`--ss`) or as JSON lines.
pub fn run(args: &NetstatArgs) -> anyhow::Result<()> {
    let table = Table::read(args.source.into()).context("reading the socket table")?;
    let text = if args.json {
        let mut out = String::new();
        for s in &table.sockets {
            out.push_str(&serde_json::to_string(s).context("encoding a socket as JSON")?);
            out.push('\n');
        }
        out
    } else if args.ss {
        ss::render(&table, ss::screen_width())
    } else {
        let opts = netstat::Options {
            wide: args.wide,
            programs: args.programs,
            extend: args.extend,
            timers: args.timers,
        };
        // One scan up front, as netstat makes; sockets of processes out of sight stay `-` without rescans.
        let mut owners = ProcessMap::with_interval(Duration::MAX);
        if args.programs {
            owners.refresh();
        }
        netstat::render(&table.sockets, &opts, |inode| {
            owners.get(inode).map(|o| o.netstat_label())
        })
    };
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}
