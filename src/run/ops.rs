//! The operations around the core run (CONTRACT §2, §6, §7): fetching remote inbound files into
//! the run's temporary folder, decrypting PGP files, delivering exports to remote destinations,
//! `.processed` markers, e-mailed receipts, metrics and the run report's operations section.
//!
//! Everything here either happens before the commit and fails the run (fetch, decrypt, remote
//! export), or after it and never changes the exit code or the data (markers, mail, metrics:
//! their failures are warnings in the run report).

use crate::config::{Config, Destination, Location};
use crate::inbound::discover::{Discovery, JobKey};
use crate::inbound::pgp::{PrivateKey, decrypt_file};
use crate::report::mail::{MailOutcome, MailSettings, send_receipts};
use crate::report::metrics::JobSeconds;
use crate::report::receipt::JobReceipt;
use crate::report::run_report::RunReport;
use crate::state::write_atomic;
use crate::storage::{StorageError, Store};
use anyhow::{Context as _, anyhow};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The run's scratch folder `state/tmp/<name>/`: fetched inbound copies, decrypted plaintexts,
/// staged exports. Created on first use, removed with everything in it when dropped, so it is
/// gone after the run whether it committed or failed.
pub(super) struct TmpDir {
    path: PathBuf,
}

impl TmpDir {
    /// The scratch folder `name` under `state_root/tmp`. Leftovers of a killed run with the same
    /// name are removed now.
    pub(super) fn new(state_root: &Path, name: &str) -> TmpDir {
        let path = state_root.join("tmp").join(name);
        let _ = std::fs::remove_dir_all(&path);
        TmpDir { path }
    }

    /// Removes scratch folders under `state_root/tmp` that no run uses any more, so that a killed
    /// run's spilled ops and staged exports (gigabytes on a large night) do not stay forever:
    /// dry-run folders (`…-dry-PID`) whose process is gone, and, when `locked` (the caller holds
    /// the state lock, so no other real run is alive), every other folder. Best effort: a folder
    /// that cannot be removed is logged and left.
    pub(super) fn sweep_stale(state_root: &Path, locked: bool) {
        let Ok(entries) = std::fs::read_dir(state_root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Dry runs and the tasks of a staged run name their folders after their process.
            let stale = match name
                .rsplit_once("-dry-")
                .or_else(|| name.rsplit_once("-pid-"))
            {
                Some((_, pid)) => process_gone(pid),
                None => locked,
            };
            if stale && let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(
                    folder = %entry.path().display(),
                    error = %e,
                    "cannot remove a stale temporary folder"
                );
            }
        }
    }

    /// Removes the local copies that killed tasks of a staged run left under the temp folder
    /// (`segmill-<task>-pid-<pid>`, the process gone).
    pub(super) fn sweep_stale_scratch(temp: &Path) {
        let Ok(entries) = std::fs::read_dir(temp) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(pid) = name
                .strip_prefix("segmill-")
                .and_then(|rest| rest.rsplit_once("-pid-"))
                .map(|(_, pid)| pid)
                && process_gone(pid)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes the folder and everything in it now (it is re-created if used again). Called
    /// right after the commit, so a run killed while it mails and writes metrics leaves no
    /// scratch behind.
    pub(super) fn remove_now(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                folder = %self.path.display(),
                error = %e,
                "cannot remove the run's temporary folder"
            );
        }
    }

    /// `rel` (a `/`-separated relative path from a listing) under `area` of the folder, with its
    /// parent folders created. Refuses components that could leave the folder.
    pub(super) fn file(&self, area: &str, rel: &str) -> anyhow::Result<PathBuf> {
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\'))
        {
            return Err(anyhow!("{rel}: not a plain relative path"));
        }
        let path = self.path.join(area).join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(path)
    }

    /// The folder `area` under the scratch folder, empty and created.
    pub(super) fn dir(&self, area: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(area);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// Opens the store at `location` with the config's `[s3]`/`[ftp]` settings, the AWS environment
/// filling what they leave unset.
pub(super) fn open_store(config: &Config, location: &Location) -> Result<Store, StorageError> {
    Store::open(location, &config.storage.clone().with_env())
}

/// Copies every discovered file that planning may read into `tmp/in/<rel>` and points its
/// `path` there (sizes become those of the fetched bytes). Files `skip` accepts (names the
/// ledger already has as processed) are not fetched: they are reported as duplicates unread.
pub(super) fn fetch_discovered(
    store: &Store,
    discovery: &mut Discovery,
    skip: &dyn Fn(&str) -> bool,
    tmp: &TmpDir,
) -> anyhow::Result<()> {
    let fetch = |rel: &str| fetch_inbound(store, rel, tmp);
    for found in discovery
        .trait_files
        .iter_mut()
        .chain(discovery.idsync_files.iter_mut())
    {
        if !skip(&found.display) {
            (found.path, found.size) = fetch(&found.display)?;
        }
    }
    for rejected in &mut discovery.rejected {
        if !skip(&rejected.display) {
            (rejected.path, rejected.size) = fetch(&rejected.display)?;
        }
    }
    Ok(())
}

/// Copies the inbound file `rel` into `tmp/in/<rel>`; its local path and size.
pub(super) fn fetch_inbound(
    store: &Store,
    rel: &str,
    tmp: &TmpDir,
) -> anyhow::Result<(PathBuf, u64)> {
    let dest = tmp.file("in", rel)?;
    let size = store
        .fetch(rel, &dest)
        .with_context(|| format!("cannot fetch inbound file {}", store.describe(rel)))?;
    tracing::debug!(file = %store.describe(rel), bytes = size, "fetched");
    Ok((dest, size))
}

/// The configured PGP key, loaded on first use.
pub(super) struct PgpKeys<'a> {
    config: &'a Config,
    key: Option<PrivateKey>,
}

/// What became of one PGP file.
pub(super) enum Decrypted {
    /// The plaintext, ready to read.
    Plain(PathBuf),
    /// The file is rejected for this reason.
    Rejected(String),
}

/// Receipt reason of a PGP file when no key is configured.
pub(super) const NO_PGP_KEY: &str = "PGP file but no [pgp] private_key configured";

impl<'a> PgpKeys<'a> {
    pub(super) fn new(config: &'a Config) -> PgpKeys<'a> {
        PgpKeys { config, key: None }
    }

    /// Decrypts `src` (shown as `display`) into the scratch folder. A content problem is a
    /// rejection; a key or I/O problem fails the run.
    pub(super) fn decrypt(
        &mut self,
        src: &Path,
        display: &str,
        tmp: &TmpDir,
    ) -> anyhow::Result<Decrypted> {
        let Some(settings) = &self.config.pgp else {
            return Ok(Decrypted::Rejected(NO_PGP_KEY.into()));
        };
        let key = match self.key.take() {
            Some(key) => key,
            None => PrivateKey::from_file(&settings.private_key, settings.passphrase.as_deref())?,
        };
        let dest = tmp.file("plain", display)?;
        let result = decrypt_file(src, &dest, &key);
        self.key = Some(key);
        match result {
            Ok(_) => Ok(Decrypted::Plain(dest)),
            Err(e) => match e.rejection_reason() {
                Some(reason) => Ok(Decrypted::Rejected(reason)),
                None => Err(anyhow::Error::from(e)),
            },
        }
    }
}

/// Sends the destination's files staged in `staging` to its remote location: every data file
/// first, the `.info` last, so a partner that waits for the `.info` sees complete batches.
pub(super) fn deliver_export(
    config: &Config,
    dest: &Destination,
    staging: &Path,
    files: &[String],
    info: &str,
) -> anyhow::Result<()> {
    let store = open_store(config, &dest.location)
        .with_context(|| format!("destination {}: {}", dest.id, dest.location))?;
    for name in files.iter().map(String::as_str).chain([info]) {
        store
            .put(&staging.join(name), name)
            .with_context(|| format!("destination {}: cannot upload {name}", dest.id))?;
        tracing::debug!(destination = dest.id, file = %store.describe(name), "uploaded");
    }
    Ok(())
}

/// Writes `<rel>.processed` beside each processed inbound file; each failure is a warning.
pub(super) fn write_markers(store: &Store, processed: &[String], run_id: &str) -> Vec<String> {
    let body = format!("processed by segmill run {run_id}\n");
    let mut warnings = Vec::new();
    for rel in processed {
        let marker = format!("{rel}.processed");
        if let Err(e) = store.put_bytes(&marker, body.as_bytes()) {
            tracing::warn!(error = %e, "marker not written");
            warnings.push(format!("marker {}: {e}", store.describe(&marker)));
        }
    }
    warnings
}

/// Mails each job's receipt to the `receipt_emails` of its data source and of its OWNER data
/// source; jobs with no recipient are skipped.
pub(super) fn mail_receipts(config: &Config, receipts: &[JobReceipt]) -> Vec<MailOutcome> {
    let Some(smtp) = &config.smtp else {
        return Vec::new();
    };
    let mut settings: MailSettings = smtp.clone();
    if let Some(ms) = std::env::var("SEGMILL_SMTP_RETRY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Tests shorten the pauses between attempts; the count stays the same.
        let pause = std::time::Duration::from_millis(ms);
        settings.retry_delays.iter_mut().for_each(|d| *d = pause);
    }
    let mut outcomes = Vec::new();
    for receipt in receipts {
        let to = recipients(config, receipt);
        if to.is_empty() {
            continue;
        }
        let result = send_receipts(&settings, &to, receipt);
        if let Err(e) = &result {
            tracing::warn!(job = %receipt.job, error = %e, "receipt mail not delivered");
        }
        outcomes.push(MailOutcome::from_result(receipt, &to, &result));
    }
    outcomes
}

/// The addresses a job's receipt goes to, in configuration order, without repeats.
fn recipients(config: &Config, receipt: &JobReceipt) -> Vec<String> {
    let mut to: Vec<String> = Vec::new();
    for dpid in std::iter::once(receipt.dpid).chain(receipt.owner) {
        if let Some(ds) = config.data_source(dpid) {
            for email in &ds.receipt_emails {
                if !to.contains(email) {
                    to.push(email.clone());
                }
            }
        }
    }
    to
}

/// `runs/<run_id>.json`: the run report plus what happened after the commit.
#[derive(serde::Serialize)]
struct OpsReport<'a> {
    #[serde(flatten)]
    report: &'a RunReport,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    mail: &'a [MailOutcome],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
}

/// Writes the run report, with the mail outcomes and warnings when there are any, atomically.
pub(super) fn write_report(
    path: &Path,
    report: &RunReport,
    mail: &[MailOutcome],
    warnings: &[String],
) -> anyhow::Result<()> {
    let ops = OpsReport {
        report,
        mail,
        warnings,
    };
    let mut text = serde_json::to_string_pretty(&ops)
        .with_context(|| format!("cannot serialize the run report {}", path.display()))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Wall-clock time the run spends on each job's trait files, for the metrics'
/// `segmill_job_duration_seconds{job}`. The reading loop times each file with
/// [`JobClock::time`]; files are read one after another, so the times never overlap.
#[derive(Default)]
pub(super) struct JobClock {
    seconds: RefCell<BTreeMap<JobKey, f64>>,
}

/// Times one piece of a job's work until dropped, however the scope is left (`continue`, `?`).
pub(super) struct JobTimer<'a> {
    clock: &'a JobClock,
    job: JobKey,
    started: Instant,
}

impl JobClock {
    /// A clock with no time for any job.
    pub(super) fn new() -> JobClock {
        JobClock::default()
    }

    /// Starts timing work for `job`; the time until the guard is dropped is added to it.
    pub(super) fn time(&self, job: JobKey) -> JobTimer<'_> {
        JobTimer {
            clock: self,
            job,
            started: Instant::now(),
        }
    }

    /// Seconds per job, keyed by the job's receipt name (`21`, `21_901`).
    pub(super) fn seconds(&self) -> JobSeconds {
        match self.seconds.try_borrow() {
            Ok(map) => map.iter().map(|(job, s)| (job.to_string(), *s)).collect(),
            Err(_) => JobSeconds::new(),
        }
    }
}

impl Drop for JobTimer<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        // Never contended: the clock lends its map only inside this call and `seconds`.
        if let Ok(mut map) = self.clock.seconds.try_borrow_mut() {
            *map.entry(self.job).or_default() += elapsed;
        }
    }
}

/// A progress bar on stderr when it is a terminal; hidden (free) otherwise, so cron runs stay
/// silent. Shows the current stage and, while trait files are read, how many are done.
pub(super) struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar for an interactive stderr, a hidden one otherwise.
    pub(super) fn new() -> Progress {
        use std::io::IsTerminal as _;
        let bar = if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} {msg} {pos}/{len} files",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress { bar }
    }

    /// Names the stage now running.
    pub(super) fn stage(&self, name: &'static str) {
        self.bar.set_message(name);
    }

    /// Sets how many files the reading stage has in all.
    pub(super) fn files(&self, total: usize) {
        self.bar.set_length(total as u64);
    }

    /// One more file read.
    pub(super) fn file_done(&self) {
        self.bar.inc(1);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Whether `pid` (decimal text) names a process that is not this one and no longer runs.
fn process_gone(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_dir_is_created_on_use_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("tmp/000001-x");
        {
            let tmp = TmpDir::new(root.path(), "000001-x");
            assert!(!path.exists());
            let f = tmp.file("in", "p/date=2026-11-21/a.sync").unwrap();
            assert_eq!(f, path.join("in/p/date=2026-11-21/a.sync"));
            assert!(path.join("in/p/date=2026-11-21").is_dir());
            assert!(tmp.file("in", "../a").is_err());
            assert!(tmp.file("in", "a//b").is_err());
        }
        assert!(!path.exists());
    }

    #[test]
    fn stale_tmp_folders_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        let me = format!("000002-x-dry-{}", std::process::id());
        // A PID above the kernel's pid_max (4194304) is never alive.
        for name in ["000001-killed", "000002-x-dry-4999999", me.as_str()] {
            std::fs::create_dir_all(tmp.join(name).join("ops")).unwrap();
            std::fs::write(tmp.join(name).join("ops/ops-0000"), b"spilled").unwrap();
        }
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // Without the lock only dead dry runs go; with it, every real run's folder too.
        TmpDir::sweep_stale(root.path(), false);
        assert_eq!(names(), vec!["000001-killed".to_string(), me.clone()]);
        TmpDir::sweep_stale(root.path(), true);
        assert_eq!(names(), vec![me]);
        // No tmp folder at all: nothing to do.
        TmpDir::sweep_stale(&root.path().join("missing"), true);
    }

    #[test]
    fn job_clock_adds_up_each_jobs_time() {
        let crm = JobKey {
            dpid: 21,
            owner: None,
        };
        let owned = JobKey {
            dpid: 21,
            owner: Some(901),
        };
        let clock = JobClock::new();
        assert_eq!(clock.seconds(), JobSeconds::new());
        let pause = std::time::Duration::from_millis(20);
        for job in [crm, owned, crm] {
            let _timed = clock.time(job);
            std::thread::sleep(pause);
        }
        let seconds = clock.seconds();
        let names: Vec<&str> = seconds.keys().map(String::as_str).collect();
        assert_eq!(names, ["21", "21_901"]);
        // Two files of job 21, one of 21_901; each timer stopped when its loop turn ended.
        assert!(seconds["21"] >= 0.040 && seconds["21"] < 5.0, "{seconds:?}");
        assert!(
            seconds["21_901"] >= 0.020 && seconds["21_901"] < 5.0,
            "{seconds:?}"
        );
    }

    #[test]
    fn report_adds_mail_and_warnings_only_when_present() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("r.json");
        let report = RunReport {
            run_id: "000001-x".into(),
            as_of: "2026-11-21T23:59:59Z".into(),
            dry_run: false,
            generation: 1,
            files: vec![],
            ignored: vec![],
            rejected_files: vec![],
            expired_traits: 0,
            profiles_changed: 0,
            exit_code: 0,
            durations_seconds: Default::default(),
            total_seconds: 0.0,
        };
        write_report(&path, &report, &[], &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, report.to_json());
        write_report(&path, &report, &[], &["marker x: denied".into()]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["warnings"], serde_json::json!(["marker x: denied"]));
        assert_eq!(v["run_id"], "000001-x");
        assert!(v.get("mail").is_none());
    }
}
