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
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    if args.json {
        for s in &table.sockets {
            // An io::Error keeps a closed pipe recognisable (it ends quietly).
            serde_json::to_writer(&mut out, s)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"))
                .context("writing to stdout")?;
        }
    } else if args.ss {
        ss::write(&table, ss::screen_width(), &mut out).context("writing to stdout")?;
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
        netstat::write(
            &table.sockets,
            &opts,
            |inode| owners.get(inode).map(|o| o.netstat_label()),
            &mut out,
        )
        .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")
}
