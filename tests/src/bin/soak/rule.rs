//! The pass rule: the agent's memory flat after warm-up, and nothing lost.

/// Most the agent's RSS may grow over the baseline, as a fraction of it.
pub const RSS_GROWTH: f64 = 0.10;

/// One reading of the agent's resident memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Rss {
    /// When it was taken, as printed (`minute 3`, `warm-up at 20 s`).
    pub at: String,
    /// VmRSS in KiB.
    pub kib: u64,
}

/// What the agent said when it ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct End {
    /// Its exit status (None when a signal ended it).
    pub code: Option<i32>,
    /// `dropped records (ring buffer full): N`.
    pub dropped_records: u64,
    /// `socket events: ... N lost (ring full)`.
    pub socket_events_lost: u64,
}

/// Passes (with a line saying what was compared) or fails with a one-line reason: a reading after the baseline
/// more than [`RSS_GROWTH`] above it, a lost record or socket event, or an agent that did not end cleanly.
pub fn verdict(minutes: &[Rss], warmup: Option<&Rss>, end: &End) -> Result<String, String> {
    if end.code != Some(0) {
        let status = end.code.map_or("a signal".to_owned(), |c| format!("status {c}"));
        return Err(format!("the agent ended with {status}"));
    }
    if end.dropped_records > 0 {
        return Err(format!("{} records dropped (ring buffer full)", end.dropped_records));
    }
    if end.socket_events_lost > 0 {
        return Err(format!("{} socket events lost (ring full)", end.socket_events_lost));
    }
    // The end of minute 1 when later minutes follow, else the warm-up reading.
    let base = if minutes.len() >= 2 { minutes.first() } else { warmup };
    let Some(base) = base else {
        return Err("no RSS reading to compare against".to_owned());
    };
    let later = if minutes.len() >= 2 { &minutes[1..] } else { minutes };
    if later.is_empty() {
        return Err(format!("no RSS reading after the baseline ({})", base.at));
    }
    let limit = base.kib as f64 * (1.0 + RSS_GROWTH);
    if let Some(over) = later.iter().find(|r| r.kib as f64 > limit) {
        return Err(format!(
            "RSS at {} is {} KiB, {:+.1}% over {} KiB at {} (limit +{:.0}%)",
            over.at,
            over.kib,
            growth(base.kib, over.kib),
            base.kib,
            base.at,
            RSS_GROWTH * 100.0
        ));
    }
    let max = later.iter().map(|r| r.kib).max().unwrap_or(base.kib);
    Ok(format!(
        "RSS at most {max} KiB after {} KiB at {} ({:+.1}%, limit +{:.0}%); no record or socket event lost",
        base.kib,
        base.at,
        growth(base.kib, max),
        RSS_GROWTH * 100.0
    ))
}

fn growth(base: u64, kib: u64) -> f64 {
    (kib as f64 / base as f64 - 1.0) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss(at: &str, kib: u64) -> Rss {
        Rss { at: at.to_owned(), kib }
    }

    fn clean() -> End {
        End {
            code: Some(0),
            ..End::default()
        }
    }

    #[test]
    fn flat_memory_and_no_losses_pass() {
        let minutes = [
            rss("minute 1", 40_000),
            rss("minute 2", 43_000),
            rss("minute 3", 44_000),
        ];
        assert!(verdict(&minutes, Some(&rss("warm-up", 10)), &clean()).is_ok());
    }

    #[test]
    fn growth_past_ten_percent_of_minute_one_fails_at_any_minute() {
        let minutes = [
            rss("minute 1", 40_000),
            rss("minute 2", 44_001),
            rss("minute 3", 40_000),
        ];
        let e = verdict(&minutes, None, &clean()).unwrap_err();
        assert!(e.starts_with("RSS at minute 2 is 44001 KiB"), "{e}");
    }

    #[test]
    fn exactly_ten_percent_passes() {
        let minutes = [rss("minute 1", 40_000), rss("minute 2", 44_000)];
        assert!(verdict(&minutes, None, &clean()).is_ok());
    }

    #[test]
    fn one_minute_compares_with_the_warm_up_reading() {
        let warm = rss("warm-up at 20 s", 30_000);
        assert!(verdict(&[rss("minute 1", 33_000)], Some(&warm), &clean()).is_ok());
        let e = verdict(&[rss("minute 1", 33_001)], Some(&warm), &clean()).unwrap_err();
        assert!(e.contains("over 30000 KiB at warm-up at 20 s"), "{e}");
        assert!(verdict(&[rss("minute 1", 33_000)], None, &clean()).is_err());
    }

    #[test]
    fn any_loss_or_unclean_end_fails() {
        let minutes = [rss("minute 1", 40_000), rss("minute 2", 40_000)];
        let dropped = End {
            dropped_records: 1,
            ..clean()
        };
        assert_eq!(
            verdict(&minutes, None, &dropped).unwrap_err(),
            "1 records dropped (ring buffer full)"
        );
        let lost = End {
            socket_events_lost: 2,
            ..clean()
        };
        assert_eq!(
            verdict(&minutes, None, &lost).unwrap_err(),
            "2 socket events lost (ring full)"
        );
        let killed = End { code: None, ..clean() };
        assert_eq!(
            verdict(&minutes, None, &killed).unwrap_err(),
            "the agent ended with a signal"
        );
    }
}
