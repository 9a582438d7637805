//! `segmill backfill --from DAY --to DAY`: replays the inbound `date=` folders day by day, each
//! day one ordinary run over that day's folders only, with as-of at the day's last second (UTC).
//!
//! Resumable: a day whose end is not after the current state's as-of time was committed already
//! (by this backfill before a crash, or by an earlier one) and is skipped. Nothing extra is kept
//! in the state, so a backfilled state is byte for byte the state that nightly runs on those
//! days would have left.

use super::{RunError, RunOptions, RunSummary, StateMeta, run};
use crate::config::Config;
use crate::model::Timestamp;
use crate::state::StateDir;
use anyhow::{Context as _, anyhow};

/// What the backfill did with one day.
#[derive(Debug)]
pub enum BackfillDay {
    /// The day was run.
    Ran {
        /// `YYYY-MM-DD`.
        day: String,
        /// Its run.
        summary: Box<RunSummary>,
    },
    /// The state was already at or past the day's end: nothing was done.
    Skipped {
        /// `YYYY-MM-DD`.
        day: String,
        /// The state's as-of time, RFC 3339.
        state_as_of: String,
    },
}

/// The last second of `day` (`YYYY-MM-DD`) in UTC, as a Unix timestamp.
pub fn day_end(day: &str) -> anyhow::Result<Timestamp> {
    let date: jiff::civil::Date = day
        .parse()
        .map_err(|e| anyhow!("{day:?} is not a date like 2026-11-21 ({e})"))?;
    let end = date
        .at(23, 59, 59, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| anyhow!("{day}: {e}"))?;
    Ok(end.timestamp().as_second())
}

/// Runs every day from `from` to `to` (inclusive) in order, calling `on_day` after each one.
/// `base` supplies threads, chunk size and `no_export`. Stops at the first day whose run fails.
pub fn backfill(
    config: &Config,
    from: &str,
    to: &str,
    base: &RunOptions,
    on_day: &mut dyn FnMut(&BackfillDay),
) -> Result<Vec<BackfillDay>, RunError> {
    let first: jiff::civil::Date = from
        .parse()
        .map_err(|e| anyhow!("--from {from:?}: expected a date like 2026-11-21 ({e})"))?;
    let last: jiff::civil::Date = to
        .parse()
        .map_err(|e| anyhow!("--to {to:?}: expected a date like 2026-11-21 ({e})"))?;
    if last < first {
        return Err(anyhow!("--to {to} is before --from {from}").into());
    }
    let mut done = Vec::new();
    let mut date = first;
    loop {
        let day = date.to_string();
        let end = day_end(&day)?;
        let outcome = match state_as_of(config)? {
            Some(as_of) if as_of >= end => BackfillDay::Skipped {
                day: day.clone(),
                state_as_of: jiff::Timestamp::from_second(as_of)
                    .map_or_else(|_| as_of.to_string(), |t| t.to_string()),
            },
            _ => {
                let opts = RunOptions {
                    as_of: end,
                    day: Some(day.clone()),
                    ..base.clone()
                };
                tracing::info!(day = %day, "backfill day");
                BackfillDay::Ran {
                    day: day.clone(),
                    summary: Box::new(run(config, &opts)?),
                }
            }
        };
        on_day(&outcome);
        done.push(outcome);
        if date >= last {
            break;
        }
        date = date
            .tomorrow()
            .map_err(|e| anyhow!("the day after {day}: {e}"))?;
    }
    Ok(done)
}

/// The as-of time of the current state generation, if there is one.
fn state_as_of(config: &Config) -> anyhow::Result<Option<Timestamp>> {
    let state = StateDir::open(&config.paths.state).with_context(|| {
        format!(
            "cannot open the state folder {}",
            config.paths.state.display()
        )
    })?;
    let Some(current) = state
        .current()
        .context("cannot read the current state generation")?
    else {
        return Ok(None);
    };
    let meta: StateMeta =
        serde_json::from_value(current.manifest.meta.clone()).with_context(|| {
            format!(
                "state generation {}: manifest metadata is not segmill's",
                current.number
            )
        })?;
    Ok(Some(meta.as_of))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_end_is_the_last_utc_second() {
        assert_eq!(day_end("2026-11-21").unwrap(), 1_795_305_599);
        assert_eq!(day_end("2024-02-29").unwrap(), 1_709_251_199);
        let err = day_end("2026-02-30").unwrap_err().to_string();
        assert!(
            err.starts_with("\"2026-02-30\" is not a date like 2026-11-21"),
            "{err}"
        );
    }
}
