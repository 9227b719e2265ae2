//! `observer compare`: our table next to `netstat -ant` and `ss -tan`, row by row.

use std::io::{self, Write as _};

use crate::{
    cli::CompareArgs,
    table::compare::{CompareError, Snapshot, evaluate},
};

/// `observer compare`: takes the three tables, retakes them once when they differ, prints the report (text or
/// JSON) and returns whether they agree.
pub fn run(args: &CompareArgs) -> Result<bool, CompareError> {
    let first = Snapshot::take(args.source.into())?;
    let mut report = evaluate(&first, None);
    if !report.agrees() {
        let second = Snapshot::take(args.source.into())?;
        report = evaluate(&second, Some(&first));
    }
    let text = if args.json {
        // A report of strings and numbers always encodes.
        serde_json::to_string(&report)
            .map(|json| json + "\n")
            .unwrap_or_default()
    } else {
        report.text()
    };
    let mut stdout = io::stdout().lock();
    // A closed pipe loses the report, not the verdict: the exit code still tells.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    Ok(report.agrees())
}
