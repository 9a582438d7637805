//! The run's metrics as a Prometheus text-exposition file, for node_exporter's textfile
//! collector (CONTRACT §6, operations issue item 7).
//!
//! Owns: rendering one run's report and job receipts as text-format 0.0.4 samples with HELP and
//! TYPE lines ([`render`], pure), and replacing the configured file atomically ([`write`]), so
//! a scrape never sees half a file.
//!
//! Does not: serve HTTP or keep values across runs. Every sample describes the last run only,
//! so every metric is a gauge, including the two whose fixed names end in `_total`.
//!
//! Series, in this order:
//! - `segmill_records_total{job,category}`: the job's received records by receipt category
//!   (`stored`, `format_errors`, `invalid_aam_id`, `invalid_device_id`, `no_matching_aam_id`,
//!   `no_trait_realized`, `lines_over_user_limit`). The categories partition Records received
//!   (CONTRACT §3), so `sum by (job)` is the received count.
//! - `segmill_match_rate{job}`: matched / (matched + No Matching AAM ID), where matched lines
//!   passed format and ID validation and resolved to a profile. No sample when the job had no
//!   line to match (the ratio is undefined).
//! - `segmill_rejected_files_total`.
//! - `segmill_job_duration_seconds{job}`, when the caller measured it ([`JobSeconds`]): the
//!   wall-clock time the run spent reading the job's new trait files (decrypting,
//!   decompressing, parsing, matching IDs, evaluating trait rules). Files are read one after
//!   another, so these times add up to at most the `parse` stage; fetching remote files,
//!   merging and writing are shared by all jobs and counted only in their stages. A job with
//!   a receipt but nothing read this run (only duplicates or rejected names) shows 0.
//! - `segmill_run_duration_seconds` (the whole run), `segmill_stage_duration_seconds{stage}`,
//!   `segmill_last_run_timestamp_seconds` (the run's as-of time), `segmill_last_run_exit_code`.
//!
//! Jobs are sorted by name and a job that appears in several receipts is summed, so the output
//! is deterministic and never repeats a series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::receipt::{Counters, JobReceipt};
use crate::report::run_report::RunReport;
use crate::state::{StateError, write_atomic};

/// Why the metrics file could not be written (a run problem for the caller to report; the
/// run's data is not affected).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write metrics file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: StateError,
    },
}

/// Seconds the run spent on each job, keyed by the job's name as in its receipt (`21`,
/// `21_901`); see the module documentation for what is counted.
pub type JobSeconds = BTreeMap<String, f64>;

/// Renders the report, the receipts and, when measured, the per-job durations, and replaces
/// `path` atomically (temp file beside it, fsync, rename). The folder must exist.
pub fn write_with_job_seconds(
    path: &Path,
    report: &RunReport,
    receipts: &[JobReceipt],
    job_seconds: Option<&JobSeconds>,
) -> Result<(), MetricsError> {
    let text = render(report, receipts, job_seconds);
    write_atomic(path, text.as_bytes()).map_err(|source| MetricsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders the metrics of one run in the Prometheus text exposition format (version 0.0.4).
/// Without `job_seconds` the `segmill_job_duration_seconds` family is left out.
pub fn render(
    report: &RunReport,
    receipts: &[JobReceipt],
    job_seconds: Option<&JobSeconds>,
) -> String {
    let mut jobs: BTreeMap<&str, Counters> = BTreeMap::new();
    for receipt in receipts {
        jobs.entry(receipt.job.as_str())
            .or_default()
            .add(&receipt.counters);
    }
    let mut out = String::with_capacity(512 + jobs.len() * 700);

    header(
        &mut out,
        "segmill_records_total",
        "Records received by the last run, per job and receipt category.",
    );
    for (job, c) in &jobs {
        let categories: [(&str, u64); 7] = [
            ("stored", c.stored_records),
            ("format_errors", c.format_errors),
            ("invalid_aam_id", c.invalid_aam_id),
            ("invalid_device_id", c.invalid_device_id),
            ("no_matching_aam_id", c.no_matching_aam_id),
            ("no_trait_realized", c.no_trait_realized),
            ("lines_over_user_limit", c.lines_over_user_limit),
        ];
        for (category, value) in categories {
            out.push_str("segmill_records_total{job=\"");
            escape_label(job, &mut out);
            let _ = writeln!(out, "\",category=\"{category}\"}} {value}");
        }
    }

    header(
        &mut out,
        "segmill_match_rate",
        "Share of the last run's valid records whose ID matched a profile, per job (0 to 1).",
    );
    for (job, c) in &jobs {
        if let Some(rate) = match_rate(c) {
            out.push_str("segmill_match_rate{job=\"");
            escape_label(job, &mut out);
            out.push_str("\"} ");
            push_float(rate, &mut out);
            out.push('\n');
        }
    }

    header(
        &mut out,
        "segmill_rejected_files_total",
        "Inbound files rejected whole by the last run.",
    );
    let _ = writeln!(
        out,
        "segmill_rejected_files_total {}",
        report.rejected_files.len()
    );

    if let Some(job_seconds) = job_seconds {
        header(
            &mut out,
            "segmill_job_duration_seconds",
            "Wall-clock time the last run spent reading each job's new trait files.",
        );
        let mut names: Vec<&str> = jobs.keys().copied().collect();
        names.extend(job_seconds.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        for job in names {
            out.push_str("segmill_job_duration_seconds{job=\"");
            escape_label(job, &mut out);
            out.push_str("\"} ");
            push_float(job_seconds.get(job).copied().unwrap_or(0.0), &mut out);
            out.push('\n');
        }
    }

    header(
        &mut out,
        "segmill_run_duration_seconds",
        "Wall-clock duration of the last run.",
    );
    out.push_str("segmill_run_duration_seconds ");
    push_float(report.total_seconds, &mut out);
    out.push('\n');

    header(
        &mut out,
        "segmill_stage_duration_seconds",
        "Wall-clock duration of each stage of the last run.",
    );
    for (stage, seconds) in &report.durations_seconds {
        out.push_str("segmill_stage_duration_seconds{stage=\"");
        escape_label(stage, &mut out);
        out.push_str("\"} ");
        push_float(*seconds, &mut out);
        out.push('\n');
    }

    header(
        &mut out,
        "segmill_last_run_timestamp_seconds",
        "As-of time of the last run, in seconds since the Unix epoch.",
    );
    if let Ok(ts) = report.as_of.parse::<jiff::Timestamp>() {
        let _ = writeln!(out, "segmill_last_run_timestamp_seconds {}", ts.as_second());
    }

    header(
        &mut out,
        "segmill_last_run_exit_code",
        "Exit code of the last run: 0 clean, 1 data problems, 2 failed, 3 locked.",
    );
    let _ = writeln!(out, "segmill_last_run_exit_code {}", report.exit_code);
    out
}

/// matched / (matched + No Matching AAM ID); `None` when no line reached ID matching.
fn match_rate(c: &Counters) -> Option<f64> {
    let not_matchable = c.format_errors + c.invalid_aam_id + c.invalid_device_id;
    let attempted = c.records_processed.saturating_sub(not_matchable);
    if attempted == 0 {
        return None;
    }
    let matched = attempted.saturating_sub(c.no_matching_aam_id);
    Some(matched as f64 / attempted as f64)
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// Label values escape backslash, double quote and line feed.
/// See: <https://prometheus.io/docs/instrumenting/exposition_formats/#text-format-details>
fn escape_label(value: &str, out: &mut String) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Rust's shortest round-trip decimal, with the format's spellings of the non-finite values.
fn push_float(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::run_report::FileOutcome;
    use crate::report::run_report::SeenFile;

    fn receipt(job: &str, counters: Counters) -> JobReceipt {
        JobReceipt {
            run_id: "r1".into(),
            job: job.into(),
            dpid: 21,
            owner: None,
            counters,
            job_start_time: "2026-11-22 02:00:00".into(),
            job_end_time: "2026-11-22 02:00:03".into(),
            files: Vec::new(),
            error_samples: BTreeMap::new(),
        }
    }

    fn report() -> RunReport {
        RunReport {
            run_id: "r1".into(),
            as_of: "2026-11-22T02:00:00Z".into(),
            dry_run: false,
            generation: 3,
            files: Vec::new(),
            ignored: Vec::new(),
            rejected_files: vec![SeenFile {
                name: "ftp_dpm_21_123.sync".into(),
                outcome: FileOutcome::Rejected,
                reason: Some("name".into()),
            }],
            expired_traits: 0,
            profiles_changed: 4,
            exit_code: 1,
            durations_seconds: BTreeMap::from([
                ("parse".to_owned(), 1.25),
                ("discover".to_owned(), 0.5),
            ]),
            total_seconds: 2.5,
        }
    }

    #[test]
    fn renders_exact_text() {
        let crm = Counters {
            records_received: 10,
            lines_over_user_limit: 1,
            records_processed: 9,
            format_errors: 1,
            invalid_aam_id: 0,
            no_matching_aam_id: 2,
            no_trait_realized: 1,
            stored_records: 5,
            ..Counters::default()
        };
        // Two receipts of one job are summed; a job with nothing to match has no match rate.
        let half = Counters {
            records_received: 5,
            records_processed: 5,
            no_matching_aam_id: 1,
            stored_records: 4,
            ..Counters::default()
        };
        let empty = Counters {
            records_received: 2,
            records_processed: 2,
            format_errors: 2,
            ..Counters::default()
        };
        let receipts = [
            receipt("21", crm),
            receipt("0_\"x\\\n", empty),
            receipt("21", half),
        ];
        let expected = r#"# HELP segmill_records_total Records received by the last run, per job and receipt category.
# TYPE segmill_records_total gauge
segmill_records_total{job="0_\"x\\\n",category="stored"} 0
segmill_records_total{job="0_\"x\\\n",category="format_errors"} 2
segmill_records_total{job="0_\"x\\\n",category="invalid_aam_id"} 0
segmill_records_total{job="0_\"x\\\n",category="invalid_device_id"} 0
segmill_records_total{job="0_\"x\\\n",category="no_matching_aam_id"} 0
segmill_records_total{job="0_\"x\\\n",category="no_trait_realized"} 0
segmill_records_total{job="0_\"x\\\n",category="lines_over_user_limit"} 0
segmill_records_total{job="21",category="stored"} 9
segmill_records_total{job="21",category="format_errors"} 1
segmill_records_total{job="21",category="invalid_aam_id"} 0
segmill_records_total{job="21",category="invalid_device_id"} 0
segmill_records_total{job="21",category="no_matching_aam_id"} 3
segmill_records_total{job="21",category="no_trait_realized"} 1
segmill_records_total{job="21",category="lines_over_user_limit"} 1
# HELP segmill_match_rate Share of the last run's valid records whose ID matched a profile, per job (0 to 1).
# TYPE segmill_match_rate gauge
segmill_match_rate{job="21"} 0.7692307692307693
# HELP segmill_rejected_files_total Inbound files rejected whole by the last run.
# TYPE segmill_rejected_files_total gauge
segmill_rejected_files_total 1
# HELP segmill_job_duration_seconds Wall-clock time the last run spent reading each job's new trait files.
# TYPE segmill_job_duration_seconds gauge
segmill_job_duration_seconds{job="0_\"x\\\n"} 0
segmill_job_duration_seconds{job="21"} 1.125
segmill_job_duration_seconds{job="33"} 0.25
# HELP segmill_run_duration_seconds Wall-clock duration of the last run.
# TYPE segmill_run_duration_seconds gauge
segmill_run_duration_seconds 2.5
# HELP segmill_stage_duration_seconds Wall-clock duration of each stage of the last run.
# TYPE segmill_stage_duration_seconds gauge
segmill_stage_duration_seconds{stage="discover"} 0.5
segmill_stage_duration_seconds{stage="parse"} 1.25
# HELP segmill_last_run_timestamp_seconds As-of time of the last run, in seconds since the Unix epoch.
# TYPE segmill_last_run_timestamp_seconds gauge
segmill_last_run_timestamp_seconds 1795312800
# HELP segmill_last_run_exit_code Exit code of the last run: 0 clean, 1 data problems, 2 failed, 3 locked.
# TYPE segmill_last_run_exit_code gauge
segmill_last_run_exit_code 1
"#;
        // Job 33 was read but has no receipt yet; job `0_"x\` has a receipt but read nothing.
        let job_seconds = JobSeconds::from([("21".to_owned(), 1.125), ("33".to_owned(), 0.25)]);
        assert_eq!(render(&report(), &receipts, Some(&job_seconds)), expected);

        // Not measured: the per-job family is left out, everything else is the same.
        let start = expected
            .find("# HELP segmill_job_duration_seconds")
            .unwrap();
        let end = expected
            .find("# HELP segmill_run_duration_seconds")
            .unwrap();
        let without = format!("{}{}", &expected[..start], &expected[end..]);
        assert_eq!(render(&report(), &receipts, None), without);
    }

    #[test]
    fn match_rate_edges() {
        let all = Counters {
            records_processed: 3,
            stored_records: 3,
            ..Counters::default()
        };
        assert_eq!(match_rate(&all), Some(1.0));
        let none = Counters {
            records_processed: 3,
            no_matching_aam_id: 3,
            ..Counters::default()
        };
        assert_eq!(match_rate(&none), Some(0.0));
        assert_eq!(match_rate(&Counters::default()), None);
    }

    #[test]
    fn floats_use_the_format_spellings() {
        let mut s = String::new();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0, 0.001] {
            push_float(v, &mut s);
            s.push(' ');
        }
        assert_eq!(s, "NaN +Inf -Inf 1 0.001 ");
    }

    #[test]
    fn write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segmill.prom");
        std::fs::write(&path, "old").unwrap();
        write_with_job_seconds(&path, &report(), &[], None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            render(&report(), &[], None)
        );
        let job_seconds = JobSeconds::from([("21".to_owned(), 0.5)]);
        write_with_job_seconds(&path, &report(), &[], Some(&job_seconds)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, render(&report(), &[], Some(&job_seconds)));
        assert!(text.contains("\nsegmill_job_duration_seconds{job=\"21\"} 0.5\n"));
        let missing = dir.path().join("no/such/dir/segmill.prom");
        let err = write_with_job_seconds(&missing, &report(), &[], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot write metrics file {}", missing.display())),
            "{err}"
        );
    }
}
